"""An embedding model as a served model on Modal: its own pool of the one GPU class, on its
preset's cheaper GPU, starting vLLM with the pooling runner."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.container_fidelity.conftest import DEPLOY_SETTINGS, FIRST_MODEL
from tests.container_fidelity.staging import DEPLOY_MACHINE_SECRETS, collect_manifests
from tests.container_fidelity.test_containers import _start_gpu_pool

EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_POOL = f"VLLMInference(model={EMBED_MODEL!r})"
SETTINGS = {
    **DEPLOY_SETTINGS,
    "VLLM_MODELS": json.dumps([{"name": FIRST_MODEL},
                               {"name": EMBED_MODEL, "scaledown_window": 60}]),
}  # fmt: skip


@pytest.fixture(scope="module")
def embed_manifests() -> dict[str, Any]:
    return collect_manifests({**SETTINGS, **DEPLOY_MACHINE_SECRETS})


def test_the_embedding_model_gets_its_own_cheaper_pool(embed_manifests) -> None:
    chat, embed = embed_manifests["VLLMInference"], embed_manifests[EMBED_POOL]
    assert (chat["gpu"], embed["gpu"]) == ("A100-80GB", "T4")  # the presets' GPUs
    assert embed["parameters"] == {"model": EMBED_MODEL}
    assert embed["options"]["scaledown_window"] == 60  # scales to zero on its own
    assert embed["files"] == chat["files"] and embed["packages"] == chat["packages"]


def test_the_embedding_pool_starts_vllm_with_the_pooling_runner(embed_manifests, tmp_path) -> None:
    report = _start_gpu_pool(embed_manifests[EMBED_POOL], tmp_path / "embed")
    engine = report["engine"]
    assert engine["served_model_name"] == engine["model"] == EMBED_MODEL
    cmd = engine["command"]
    assert cmd[cmd.index("--runner") + 1] == "pooling"
    assert cmd[cmd.index("--max-model-len") + 1] == "256"
    assert "--enable-auto-tool-choice" not in cmd
