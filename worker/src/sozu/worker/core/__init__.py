"""Sans-io protocol cores of the worker, driven by its readiness loop."""
