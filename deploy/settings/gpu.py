"""The GPU string grammar: Modal's ``TYPE`` or ``TYPE:COUNT`` (``"A100-80GB"``,
``"A100-80GB:2"``), as ``VLLM_GPU``, a preset's ``gpu`` and a ``VLLM_MODELS`` entry say it."""

from __future__ import annotations

import re

__all__ = ["GPU_TYPES", "gpu_count", "gpu_spec_error", "is_gpu_spec"]

GPU_TYPES = (
    "T4",
    "L4",
    "A10G",
    "A10",
    "L40S",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "H100",
    "H200",
    "B200",
)
_GPU_SPEC = re.compile(rf"^({'|'.join(re.escape(g) for g in GPU_TYPES)})(?::([1-8]))?$")


def is_gpu_spec(spec: str) -> bool:
    """Whether ``spec`` is a Modal GPU spec this service deploys."""
    return _GPU_SPEC.match(spec) is not None


def gpu_count(spec: str) -> int:
    """The GPUs ``spec`` asks for (1 without ``:COUNT``, and for a string that is no spec)."""
    match = _GPU_SPEC.match(spec)
    return int(match.group(2) or 1) if match else 1


def gpu_spec_error(spec: str) -> str:
    """What to tell a deployer whose ``VLLM_GPU`` is not a spec."""
    return (
        f"VLLM_GPU={spec!r} is not a Modal GPU spec: use TYPE or TYPE:COUNT "
        f"with TYPE one of {', '.join(GPU_TYPES)} and COUNT 1-8 (e.g. 'A100-80GB:2')"
    )
