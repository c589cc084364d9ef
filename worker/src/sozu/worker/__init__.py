"""sozu worker package."""
