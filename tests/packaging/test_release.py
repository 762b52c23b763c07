"""Release-ready: each distribution's sdist and wheel, built by ``python -m build`` from the
files a commit of this tree would hold, pass ``twine check --strict`` (PyPI renders their
README) and carry the version from its one source."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import tomllib

from deploy.core.version import __version__ as server_version

REPO = Path(__file__).resolve().parents[2]


def _run(*cmd: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600,
                          **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, list[Path]]:
    """Both distributions' sdist and wheel, from the tracked files and the new ones not
    ignored (what the next commit holds)."""
    tree = tmp_path_factory.mktemp("tree")
    listed = _run("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=REPO)
    for name in listed.stdout.split():
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    out: dict[str, list[Path]] = {}
    for key, project in (("client", tree), ("server", tree / "deploy")):
        dist = tmp_path_factory.mktemp(f"{key}-dist")
        built = _run(sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel",
                     "--outdir", dist, project)  # fmt: skip
        assert built.returncode == 0, built.stderr[-3000:] + built.stdout[-3000:]
        out[key] = sorted(dist.iterdir())
    return out


def test_twine_check_passes_for_every_sdist_and_wheel(dists) -> None:
    files = [f for each in dists.values() for f in each]
    assert sorted(f.suffix for f in files) == [".gz", ".gz", ".whl", ".whl"]
    checked = _run(sys.executable, "-m", "twine", "check", "--strict", *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 4


def test_each_version_has_one_source(dists) -> None:
    client_version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    server_project = tomllib.loads((REPO / "deploy" / "pyproject.toml").read_text())["project"]
    assert "version" not in server_project and server_project["dynamic"] == ["version"]
    names = {f.name for each in dists.values() for f in each}
    assert f"vllm_autoscale_server-{server_version}-py3-none-any.whl" in names
    assert f"langchain_vllm_autoscale-{client_version}-py3-none-any.whl" in names
    assert re.fullmatch(r"\d+\.\d+\.\d+", server_version)


def test_the_server_sdist_holds_its_readme_and_data(dists) -> None:
    sdist = next(f for f in dists["server"] if f.suffix == ".gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"README.md", "pyproject.toml", "core/version.py", "prices.json"} <= names
    assert "chat_templates/llama3.1_json_tools.jinja" in names
