"""Names every settings module and the service share: a unit, the service's identity, and the
environment names the settings travel under (baked into an image, or a secret)."""

from __future__ import annotations

__all__ = [
    "BAKED_SETTINGS_ENV",
    "CONFIG_ENV",
    "DEPLOYMENT_ENV",
    "MINUTES",
    "SECRET_ENV",
    "SERVICE_NAME",
    "SERVICE_VERSION",
]

MINUTES = 60  # seconds
BAKED_SETTINGS_ENV = "AUTOSCALE_SETTINGS_JSON"
"""The deploy-time settings, as one JSON value in each Modal image's environment. Not a
``VLLM_*`` name: vLLM warns about every ``VLLM_*`` variable it does not know."""
DEPLOYMENT_ENV = "AUTOSCALE_DEPLOYMENT_JSON"
"""What was deployed (version, commit, settings hash, time), baked beside the settings."""
CONFIG_ENV = "VLLM_CONFIG"
"""The settings file to read (``vllm-autoscale.toml``), on the deploying machine only."""
SECRET_ENV = (
    "VLLM_WRAPPER_API_KEY",
    "VLLM_API_KEYS",
    "VLLM_COLD_FALLBACK_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
)
"""Secrets the containers get from the ``vllm-secrets`` Modal Secret: never baked into an
image, never handed to the vLLM process."""
SERVICE_NAME = "VLLM Auto-Scale Service"
SERVICE_VERSION = "2.0.0"  # the seed's API version, reported by GET /
