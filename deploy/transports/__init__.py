"""How the wrapper reaches an engine: in-process (local), by Modal function call, or an OpenAI-
compatible fallback while the engine is cold.
"""
