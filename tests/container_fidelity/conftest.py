"""Container fidelity: each Modal container's own file set, staged alone and run from there.

The manifests are collected once per session, under deploy-time settings that differ from the
defaults and with secrets set on the deploying machine (none of which may reach an image)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.container_fidelity.staging import DEPLOY_MACHINE_SECRETS, collect_manifests

DEPLOY_SETTINGS = {
    "VLLM_SCALEDOWN_WINDOW": "300",
    "VLLM_MAX_CONTAINERS": "2",
    # A window open all day, every day: the scheduled function's target is known (1).
    "VLLM_WARM_SCHEDULE": "0 0 * * * 1d UTC",
}


@pytest.fixture(scope="session")
def manifests() -> dict[str, Any]:
    return collect_manifests({**DEPLOY_SETTINGS, **DEPLOY_MACHINE_SECRETS})


# Several models: a second collection, with the same deploy-time settings plus VLLM_MODELS.
# Each model gets a pool of its own (the GPU class bound to it, with its own GPU, window,
# bounds); Qwen serves adapters. The first pool's container is listed as `VLLMInference`.
FIRST_MODEL, SECOND_MODEL = "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-8B"
SECOND_POOL = f"VLLMInference(model={SECOND_MODEL!r})"
TWO_MODEL_SETTINGS = {
    **DEPLOY_SETTINGS,
    "VLLM_MODELS": json.dumps([
        {"name": FIRST_MODEL, "gpu": "A100-80GB", "scaledown_window": 120},
        {"name": SECOND_MODEL, "gpu": "H100", "scaledown_window": 300, "max_containers": 2,
         "adapters": {"sql": "acme/qwen3-sql-lora", "support": "/models/support-lora"}},
    ]),
}  # fmt: skip


@pytest.fixture(scope="session")
def two_model_manifests() -> dict[str, Any]:
    return collect_manifests({**TWO_MODEL_SETTINGS, **DEPLOY_MACHINE_SECRETS})
