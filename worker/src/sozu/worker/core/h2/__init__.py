"""The HTTP/2 frontend session core (sans-io, on the `h2` library)."""
