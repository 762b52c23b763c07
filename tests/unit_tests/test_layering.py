"""The layers stay apart: the wrapper (and its Modal transport) import no engine code, so the
wrapper's container needs no vLLM, aiohttp or process supervision; the contract is a leaf."""

from __future__ import annotations

import json
import subprocess
import sys

ENGINE_SIDE = {
    "deploy.engine", "deploy.transport_local", "deploy.local_model", "deploy.local_stack",
    "deploy.inference", "aiohttp", "vllm", "torch", "transformers",
}  # fmt: skip


def _imported(*modules: str) -> set[str]:
    code = f"import sys, json; import {', '.join(modules)}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_wrapper_import_closure_has_no_engine_code() -> None:
    loaded = _imported("deploy.wrapper", "deploy.transport_modal", "deploy.config")
    assert "deploy.wrapper.app" in loaded  # the check sees the wrapper's own modules
    assert not loaded & ENGINE_SIDE, sorted(loaded & ENGINE_SIDE)


def test_contract_is_a_leaf() -> None:
    loaded = _imported("deploy.contract")
    ours = {m for m in loaded if m.startswith("deploy.")}
    assert ours == {"deploy.contract", "deploy.errors"}


def test_gpu_side_imports_nothing_of_the_wrapper() -> None:
    loaded = _imported("deploy.inference")
    assert not {m for m in loaded if m.startswith(("deploy.wrapper", "deploy.transport_modal"))}
