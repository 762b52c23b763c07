"""What each distribution carries, built from the tracked files as a release would be.

- ``langchain-vllm-autoscale`` (the repository root): the client, and nothing else;
- ``vllm-autoscale-server`` (deploy/): the server as ``vllm_autoscale_server``, with its data
  files; without an extra, a command that needs one says which, in one line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UV = [sys.executable, "-m", "uv"]


def _run(*cmd: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600,
                          **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """Both wheels, built from a copy of the files a commit would hold: tracked, or new and
    not ignored (no stray or build output)."""
    tree = tmp_path_factory.mktemp("tree")
    listed = _run("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=REPO)
    for name in listed.stdout.split():
        if not (REPO / name).is_file():
            continue  # deleted in the work tree
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tree / name)
    # The server's pyproject may be new in this change: tracked or not, it is the source.
    shutil.copy2(REPO / "deploy" / "pyproject.toml", tree / "deploy" / "pyproject.toml")
    out = tmp_path_factory.mktemp("dist")
    for project in (tree, tree / "deploy"):
        built = _run(*UV, "build", "--quiet", "--wheel", "-o", out, project)
        assert built.returncode == 0, built.stderr[-3000:]
    found = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    return {"client": found["langchain_vllm_autoscale"], "server": found["vllm_autoscale_server"]}


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return [n for n in zf.namelist() if ".dist-info/" not in n]


def test_client_wheel_carries_the_client_only(wheels) -> None:
    names = _names(wheels["client"])
    assert "langchain_vllm_autoscale/chat_models.py" in names
    assert "langchain_vllm_autoscale/py.typed" in names
    assert {n.split("/")[0] for n in names} == {"langchain_vllm_autoscale"}


def test_server_wheel_is_its_own_package_with_its_data(wheels) -> None:
    names = set(_names(wheels["server"]))
    assert {n.split("/")[0] for n in names} == {"vllm_autoscale_server"}  # no top-level deploy
    for needed in (  # every tier package, and the data files
        "ops/cli/__init__.py",
        "core/contract.py",
        "settings/settings.py",
        "wrapper/app.py",
        "wrapper/routes/openai.py",
        "wrapper/serving/service.py",
        "wrapper/tokenize/counter.py",
        "gateway/gateway.py",
        "transports/modal.py",
        "engine/server.py",
        "cloud/manifest.py",
        "modal_app.py",
        "prices.json",
        "chat_templates/llama3.1_json_tools.jinja",
        "chat_templates/chatml_tools.jinja",
        "wrapper/dashboard/index.html",
        "wrapper/dashboard/dashboard.js",
        "wrapper/dashboard/dashboard.css",
    ):
        assert f"vllm_autoscale_server/{needed}" in names  # fmt: skip
    with zipfile.ZipFile(wheels["server"]) as zf:
        entry = next(n for n in zf.namelist() if n.endswith("entry_points.txt"))
        assert "vllm-autoscale = vllm_autoscale_server.ops.cli:main" in zf.read(entry).decode()


@pytest.fixture(scope="module")
def venvs(wheels, tmp_path_factory) -> Iterator[dict[str, Path]]:
    made = {}
    for name, wheel in wheels.items():
        venv = tmp_path_factory.mktemp(f"{name}-venv")
        assert _run(*UV, "venv", "-q", "--python", sys.executable, venv).returncode == 0
        done = _run(*UV, "pip", "install", "-q", "--python", venv / "bin" / "python", wheel)
        assert done.returncode == 0, done.stderr[-3000:]
        made[name] = venv
    yield made


def test_client_install_brings_no_server(venvs, tmp_path) -> None:
    python = venvs["client"] / "bin" / "python"
    code = ("import importlib.util as u, langchain_vllm_autoscale as c; "
            "print(c.ChatVLLMAutoscale.__name__, u.find_spec('deploy'), "
            "u.find_spec('vllm_autoscale_server'), u.find_spec('fastapi'))")  # fmt: skip
    out = _run(python, "-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ChatVLLMAutoscale", "None", "None", "None"]
    assert not (venvs["client"] / "bin" / "vllm-autoscale").exists()


def test_server_install_serves_the_dashboard_from_its_package(venvs, tmp_path) -> None:
    python = venvs["server"] / "bin" / "python"
    code = ("from vllm_autoscale_server.wrapper.routes.dashboard import ASSETS; "
            "print(' '.join(f'{n}:{len(b)}' for n, (b, _) in sorted(ASSETS.items())))")  # fmt: skip
    out = _run(python, "-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    sizes = dict(item.split(":") for item in out.stdout.split())
    dashboard = REPO / "deploy" / "wrapper" / "dashboard"
    assert sizes == {p.name: str(p.stat().st_size) for p in dashboard.iterdir()}


def test_server_command_names_the_missing_extra_in_one_line(venvs, tmp_path) -> None:
    command = venvs["server"] / "bin" / "vllm-autoscale"
    for args, extra in ((["serve", "--local"], "local"), (["deploy", "--dry-run"], "modal")):
        out = _run(command, *args, cwd=tmp_path)
        assert out.returncode == 1
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and f"needs the '{extra}' extra" in lines[0], out.stderr
        assert "Traceback" not in out.stderr
    cost = _run(command, "cost", "--hours", "2", cwd=tmp_path)  # the price table shipped
    assert cost.returncode == 0 and "always on" in cost.stdout, cost.stderr
