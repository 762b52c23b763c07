"""The settings file through the commands: ``deploy`` hands ``modal deploy`` the file's
settings under the environment (as the baked JSON modal_app.py reads) and the deploy's record;
``--dry-run`` shows each value's source; a file a setting names that cannot reach the
containers is refused in one line; ``status`` prints the record; ``cost`` reads the file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import modal
import pytest

from deploy.core.version import __version__
from deploy.ops import cli
from deploy.ops.cli import deploy as deploy_command
from deploy.ops.cli import remote
from deploy.settings.constants import BAKED_SETTINGS_ENV, DEPLOYMENT_ENV
from deploy.settings.settings import Settings

REPO = Path(__file__).resolve().parents[3]


class SecretFound:
    def __call__(self, name: str, **kwargs):
        return self

    def hydrate(self):
        return self


@pytest.fixture(autouse=True)
def _clean(monkeypatch, tmp_path) -> None:
    for name in [*Settings.env_names(), BAKED_SETTINGS_ENV, DEPLOYMENT_ENV]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VLLM_STATE_URL", "memory://")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def deploys(monkeypatch) -> list[dict]:
    """Each ``modal deploy`` run: its command and environment."""
    calls: list[dict] = []
    monkeypatch.setattr(modal.Secret, "from_name", SecretFound())
    monkeypatch.setattr(
        deploy_command.subprocess, "call",
        lambda cmd, **kw: calls.append({"cmd": cmd, **kw}) or 0,
    )  # fmt: skip
    return calls


def test_deploy_bakes_the_files_settings_under_the_environment(
    tmp_path, monkeypatch, deploys
) -> None:
    (tmp_path / "vllm-autoscale.toml").write_text("scaledown_window = 300\nmax_containers = 3\n")
    monkeypatch.setenv("VLLM_MAX_CONTAINERS", "4")
    assert cli.main(["deploy"]) == 0
    [run] = deploys
    baked = Settings(**json.loads(run["env"][BAKED_SETTINGS_ENV]))
    assert baked.scaledown_window == 300 and baked.max_containers == 4  # the env wins
    record = json.loads(run["env"][DEPLOYMENT_ENV])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    assert record["package_version"] == __version__ and record["git_commit"] == head
    assert isinstance(record["git_dirty"], bool)
    assert record["config_file"] == str((tmp_path / "vllm-autoscale.toml").resolve())
    # Without the file, other settings: another hash.
    (tmp_path / "vllm-autoscale.toml").unlink()
    assert cli.main(["deploy"]) == 0
    assert json.loads(deploys[-1]["env"][DEPLOYMENT_ENV])["config_file"] is None
    assert (
        json.loads(deploys[-1]["env"][DEPLOYMENT_ENV])["settings_sha256"]
        != record["settings_sha256"]
    )


def test_dry_run_shows_each_values_source(tmp_path, monkeypatch, capsys, deploys) -> None:
    (tmp_path / "vllm-autoscale.toml").write_text("scaledown_window = 300\nmax_containers = 3\n")
    monkeypatch.setenv("VLLM_MAX_CONTAINERS", "4")
    seen: list[dict] = []
    monkeypatch.setattr(deploy_command, "collect", lambda env: seen.append(env) or {})
    assert cli.main(["deploy", "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if "  VLLM_" in line}
    assert rows["VLLM_SCALEDOWN_WINDOW"] == ["300", "file"]
    assert rows["VLLM_MAX_CONTAINERS"] == ["4", "env"]
    assert rows["VLLM_MODE"] == ['"autoscale"', "default"]
    assert rows["VLLM_WRAPPER_API_KEY"] == ["(unset)", "default"]
    # The manifests are read under the settings the deploy would bake.
    assert json.loads(seen[0][BAKED_SETTINGS_ENV])["scaledown_window"] == 300
    assert deploys == []


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("scale_window = 9\n", "unknown setting 'scale_window'"),
        ('api_keys_file = "nowhere/keys.toml"\n', "VLLM_API_KEYS_FILE="),
        ('[adapters]\nsql = "./my-lora"\n', "adapter 'sql' is the local folder ./my-lora"),
    ],
)
def test_what_cannot_be_deployed_is_one_line(tmp_path, capsys, deploys, toml, message) -> None:
    (tmp_path / "vllm-autoscale.toml").write_text(toml)
    assert cli.main(["deploy", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert deploys == []


def test_status_prints_the_deployment(monkeypatch, capsys) -> None:
    answer = {"state": "cold", "model": "m", "deployment": {
        "package_version": "9.9.9", "git_commit": "abcdef0123456789", "git_dirty": True,
        "settings_sha256": "f" * 64, "deployed_at": "2026-01-02T03:04:05+00:00"}}  # fmt: skip
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    monkeypatch.setattr(remote, "_http_client", lambda: httpx.Client(transport=transport))
    assert cli.main(["status", "--url", "http://w.test", "--api-key", "k"]) == 0
    out = capsys.readouterr().out
    assert "deployed 2026-01-02T03:04:05+00:00 | server 9.9.9" in out
    assert "commit abcdef012345 (dirty) | settings ffffffffffff" in out


def test_cost_reads_the_window_and_price_from_the_file(tmp_path, capsys) -> None:
    (tmp_path / "vllm-autoscale.toml").write_text(
        "scaledown_window = 600\ngpu_price_per_hour = 4\n"
    )
    assert cli.main(["cost", "--hours", "2", "--json"]) == 0
    inputs = json.loads(capsys.readouterr().out)["inputs"]
    assert inputs["scaledown_window"] == 600 and inputs["gpu_price_per_hour"] == 4
    assert cli.main(["cost", "--hours", "2", "--json", "--scaledown-window", "60"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"]["scaledown_window"] == 60  # flag wins
