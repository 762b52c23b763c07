"""Container fidelity: each Modal container's own file set, staged alone and run from there.

The manifests are collected once per session, under deploy-time settings that differ from the
defaults and with secrets set on the deploying machine (none of which may reach an image)."""

from __future__ import annotations

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
