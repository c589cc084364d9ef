"""sozu supervisor package."""
