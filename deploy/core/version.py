"""The server distribution's version (``vllm-autoscale-server``), in one place: the build reads
it (``deploy/pyproject.toml``, dynamic version) and so does the running service, which on
Modal runs from shipped source, with no installed distribution to ask."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
