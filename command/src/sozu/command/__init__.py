"""sozu command package."""
