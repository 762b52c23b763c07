"""One ``Settings`` for every process, from the environment (or baked into a Modal image)."""
