"""Stage a Modal container's file set alone in an empty directory, and run code from there.

The file set comes from ``deploy.cloud.manifest`` (modal's own mount code on the objects
``deploy/modal_app.py`` builds), collected in a subprocess that imports the app exactly as
``modal deploy deploy/modal_app.py`` does. A staged process sees the container's files under
``<stage>/root`` (Modal's ``/root``) and nothing of this repository: the driver drops every
``sys.path`` entry that would reach the checkout, and checks where ``deploy`` came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from deploy.cloud.manifest import collect

REPO = Path(__file__).resolve().parents[2]
DRIVERS = Path(__file__).with_name("drivers")
# What the containers' Modal Secret holds at run time; the values are this test's own.
SECRET_VALUES = {"VLLM_WRAPPER_API_KEY": "fidelity-key-0123456789", "HF_TOKEN": "hf_fidelity0123"}
# Set on the deploying machine: none of it may reach an image.
DEPLOY_MACHINE_SECRETS = {
    "VLLM_WRAPPER_API_KEY": "deploy-machine-key-9876543210",
    "HF_TOKEN": "hf_deploymachine9876",
}


def collect_manifests(settings_env: dict[str, str]) -> dict[str, Any]:
    """Every container's manifest, as ``modal deploy`` would build it under ``settings_env``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env.update(settings_env)
    env.pop("AUTOSCALE_SETTINGS_JSON", None)
    return collect(env)


def stage(manifest: dict[str, Any], dest: Path) -> Path:
    """Copy the container's files to ``dest`` at their container paths; returns ``/root``."""
    for remote, local in manifest["files"].items():
        target = dest / remote.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, target)
    return dest / "root"


def container_env(manifest: dict[str, Any], **extra: str) -> dict[str, str]:
    """The environment a container of this manifest starts with: a bare system environment,
    the image's own variables, and the Modal Secret's values."""
    env = {k: os.environ[k] for k in ("PATH", "LANG", "TMPDIR") if k in os.environ}
    env["HOME"] = os.environ.get("HOME", "/root")
    env.update(manifest["env"])
    env.update(SECRET_VALUES)
    env.update(extra)
    return env


def venv_with(packages: list[str]) -> Path:
    """A virtual environment with only ``packages`` (plus modal's client, which Modal adds to
    every container); cached by its package list. Returns its Python."""
    import modal

    wanted = [*packages, f"modal=={modal.__version__}"]
    key = hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("VLLM_AUTOSCALE_CACHE", Path.home() / ".cache/vllm-autoscale"))
    venv = cache / "container-venvs" / key
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        uv = [sys.executable, "-m", "uv"]
        subprocess.run([*uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
        subprocess.run([*uv, "pip", "install", "-q", "--python", str(python), *wanted], check=True)
        (venv / ".complete").write_text("\n".join(wanted))
    return python


def with_llama_tool_token(model: Path) -> Path:
    """The local model, with one unused special token renamed to Llama 3.1's
    ``<|python_tag|>``: vLLM's llama3_json tool parser refuses a tokenizer without it. The
    weights are the same file (linked); only the token's text changes."""
    out = model.with_name(model.name + "-llama3-tool-token")
    if (out / "tokenizer.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in model.iterdir():
        if item.suffix == ".safetensors":
            (tmp / item.name).symlink_to(item)
        elif item.is_file():
            shutil.copy2(item, tmp / item.name)
    tokenizer = json.loads((tmp / "tokenizer.json").read_text())
    unused, tag = "<gh_stars>", "<|python_tag|>"
    for token in tokenizer["added_tokens"]:
        if token["content"] == unused:
            token["content"] = tag
    vocab = tokenizer["model"]["vocab"]
    vocab[tag] = vocab.pop(unused)
    (tmp / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    tmp.rename(out)
    return out


def start_driver(
    driver: str, root: Path, python: Path | str, env: dict[str, str], log: Path, *args: str
) -> subprocess.Popen[bytes]:
    """Run a driver script as a container would run user code: cwd ``/root``, on its path."""
    drivers = root.parent / "drivers"  # beside the staged /root, not in the repository
    shutil.copytree(DRIVERS, drivers, dirs_exist_ok=True)
    script = drivers / driver
    env = {**env, "PYTHONPATH": str(root), "STAGED_ROOT": str(root)}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(python), str(script), *args], cwd=root, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
