"""``vllm-autoscale deploy``: the dry run lists what each container carries, and the real run
checks the Modal Secret before deploying (Modal's client replaced at its boundary)."""

from __future__ import annotations

import modal
import pytest
from modal.exception import AuthError, NotFoundError

from deploy.ops import cli
from deploy.ops.cli import deploy as deploy_command


class SecretLookup:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.names: list[str] = []

    def __call__(self, name: str, **kwargs):
        self.names.append(name)
        return self

    def hydrate(self):
        if self.error is not None:
            raise self.error
        return self


@pytest.fixture
def deploys(monkeypatch) -> list[list[str]]:
    calls: list[list[str]] = []
    monkeypatch.setattr(deploy_command.subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 0)
    return calls


def test_dry_run_lists_each_containers_files_and_parsers(capsys, deploys) -> None:
    assert cli.main(["deploy", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tool parser llama3_json, chat template llama3.1_json_tools.jinja" in out
    for container in ("container wrapper", "container VLLMInference (imports modal_app; GPU A1"):
        assert container in out
    assert out.count("/root/deploy/chat_templates/llama3.1_json_tools.jinja") == 2
    assert out.count("/root/deploy/prices.json") == 2
    assert "vllm/vllm-openai:v" in out
    assert deploys == []  # a dry run deploys nothing


def test_model_without_preset_warns_which_parser_to_set(monkeypatch, capsys, deploys) -> None:
    monkeypatch.setenv("VLLM_MODEL", "Qwen/Qwen2.5-7B-Instruct")
    monkeypatch.setattr(deploy_command, "_print_manifests", lambda settings: None)
    assert cli.main(["deploy", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "tool parser none (tool calling off)" in captured.out
    assert "warning: Qwen/Qwen2.5-7B-Instruct has no preset" in captured.err
    assert "VLLM_TOOL_CALL_PARSER" in captured.err


def test_missing_secret_stops_the_deploy_and_says_what_to_create(
    monkeypatch, capsys, deploys
) -> None:
    lookup = SecretLookup(NotFoundError("Secret 'vllm-secrets' not found"))
    monkeypatch.setattr(modal.Secret, "from_name", lookup)
    assert cli.main(["deploy"]) == 1
    err = capsys.readouterr().err
    assert "the Modal Secret 'vllm-secrets' does not exist" in err
    assert "modal secret create vllm-secrets VLLM_WRAPPER_API_KEY=" in err and "HF_TOKEN" in err
    assert lookup.names == ["vllm-secrets"] and deploys == []


def test_not_logged_in_says_how(monkeypatch, capsys, deploys) -> None:
    monkeypatch.setattr(modal.Secret, "from_name", SecretLookup(AuthError("Token missing")))
    assert cli.main(["deploy"]) == 1
    assert "modal token new" in capsys.readouterr().err and deploys == []


def test_deploys_the_app_file_once_the_secret_exists(monkeypatch, deploys) -> None:
    monkeypatch.setattr(modal.Secret, "from_name", SecretLookup(None))
    assert cli.main(["deploy"]) == 0
    [command] = deploys
    assert command[1:4] == ["-m", "modal", "deploy"]
    assert command[4].endswith("deploy/modal_app.py")
