"""Running the ``vllm-autoscale`` command in a test, and a wrapper's error answer."""

from __future__ import annotations

import httpx

from deploy.ops import cli


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """The command's exit code, stdout and stderr."""
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error(status: int, message: str, param: str | None = None) -> httpx.Response:
    """The wrapper's error answer (OpenAI's shape)."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": status}}  # fmt: skip
    return httpx.Response(status, json=body)
