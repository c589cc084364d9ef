"""sozu cli package."""
