"""Deterministic simulation harnesses of the sans-io cores (outside the runtime package)."""
