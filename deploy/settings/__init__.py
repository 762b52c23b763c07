"""One ``Settings`` for every process, from the environment (or baked into a Modal image).

``Settings`` (settings.py) is composed of one part per concern: model.py, scaling.py,
gateway.py, http.py; presets.py holds the model presets and ``ModelSpec``, gpu.py the GPU
string grammar, constants.py the names they share."""

from .settings import Settings

__all__ = ["Settings"]
