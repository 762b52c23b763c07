"""deploy/engine/: the GPU side."""
