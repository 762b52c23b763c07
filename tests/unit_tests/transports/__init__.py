"""deploy/transports/: how the wrapper reaches an engine."""
