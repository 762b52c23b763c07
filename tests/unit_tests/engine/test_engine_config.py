"""EngineConfig's command line and environment for the in-process worker switch."""

from __future__ import annotations

from deploy.engine.local_embedding import local_embedding_config
from deploy.engine.local_model import local_engine_config
from deploy.engine.process import EngineConfig


def _backend(cmd: list[str]) -> str | None:
    flag = "--distributed-executor-backend"
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def test_the_in_process_worker_asks_for_the_uni_executor_and_lets_the_cpu_keep_it() -> None:
    config = EngineConfig(model="m", served_model_name="m", in_process_worker=True)
    assert _backend(config.command(8000)) == "uni"
    # vLLM's CPU platform turns "uni" back into its multiprocess executor without this.
    assert config.environment()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


def test_by_default_and_on_a_gpu_vllm_keeps_its_own_executor(monkeypatch) -> None:
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    for config in (
        EngineConfig(model="m", served_model_name="m"),
        EngineConfig(model="m", served_model_name="m", device="cuda", in_process_worker=True),
    ):
        assert _backend(config.command(8000)) is None
        assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in config.environment()


def test_the_local_engines_use_the_in_process_worker(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr("deploy.engine.local_model.prepare_local_model", lambda _=None: tmp_path)
    monkeypatch.setattr(
        "deploy.engine.local_embedding.prepare_local_embedding_model", lambda _=None: tmp_path
    )
    assert local_engine_config().in_process_worker
    assert local_embedding_config().in_process_worker
