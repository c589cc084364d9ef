"""The HTTP/1.1 session core: one sans-io state machine per client connection."""
