"""TCP proxying in a worker: backend choice and back-off, relaying, the listener shell."""
