"""The vllm-autoscale command against the live stack: status, warmup, and its error lines."""

from __future__ import annotations

import json

from deploy.engine.process import free_port
from deploy.ops.cli import main


def test_status_json_and_text(warm_stack, api_key, capsys) -> None:
    assert main(["status", "--url", warm_stack.url, "--api-key", api_key, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "warm" and status["model"]
    assert main(["status", "--url", warm_stack.url, "--api-key", api_key]) == 0
    line = capsys.readouterr().out
    assert line.startswith("engine warm | model HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "cold starts" in line and "scaledown window off" in line


def test_warmup_when_warm_returns_at_once(warm_stack, api_key, capsys) -> None:
    assert main(["warmup", "--url", warm_stack.url, "--api-key", api_key]) == 0
    assert "engine warm" in capsys.readouterr().out


def test_errors_are_one_line_with_a_hint(warm_stack, capsys) -> None:
    assert main(["status", "--url", warm_stack.url, "--api-key", "wrong"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: the wrapper at") and "refused the API key" in err[0]
    assert err[1].startswith("hint: set --api-key or VLLM_AUTOSCALE_API_KEY")
    assert "wrong" not in "\n".join(err)
    assert main(["status", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: cannot reach the wrapper") and err[1].startswith("hint:")


def test_deploy_dry_run_names_the_setup(capsys, monkeypatch) -> None:
    monkeypatch.setenv("VLLM_SCALEDOWN_WINDOW", "300")
    assert main(["deploy", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "A100-80GB" in out and "scaledown window 300 s" in out
    assert "$ modal deploy" in out and out.rstrip().endswith("modal_app.py")
    monkeypatch.setenv("VLLM_GPU", "A100-81GB")
    assert main(["deploy", "--dry-run"]) == 1
    assert "is not a Modal GPU spec" in capsys.readouterr().err


def test_serve_on_a_port_in_use_is_one_error_line(capsys) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--local", "--port", str(port)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert err[1].startswith("hint: ") and len(err) == 2  # no traceback
