"""The data plane's shell: one readiness loop per worker, listeners, connections."""
