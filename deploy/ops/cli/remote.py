"""``status`` and ``warmup``, and the small HTTP client every command that talks to a running
wrapper uses (``call``): its URL and key from the flags or the environment, its errors as one
``CliError`` line with a hint."""

# ruff: noqa: T201 - a command's output is what it prints

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any

import httpx

from .errors import CliError

__all__ = ["call", "status", "warmup"]


def _http_client() -> httpx.Client:
    """The client every wrapper call uses (tests replace it with a mock transport's)."""
    return httpx.Client(timeout=30, follow_redirects=True)


def _error_message(resp: httpx.Response) -> str:
    """The message of an OpenAI-shaped error body, on one line; else the body's start."""
    try:
        error = resp.json().get("error")
        message = str(error["message"]) if isinstance(error, dict) else ""
    except (ValueError, AttributeError, KeyError):
        message = ""
    return " ".join((message or resp.text[:300]).split())


def call(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
) -> Any:
    """One request to the wrapper: its JSON answer (None for 204), or a one-line CliError."""
    url = (args.url or os.environ.get("VLLM_AUTOSCALE_URL") or "http://127.0.0.1:8000").rstrip("/")
    key = args.api_key or os.environ.get("VLLM_AUTOSCALE_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    params = {k: v for k, v in (params or {}).items() if v is not None}
    try:
        with _http_client() as client:
            resp = client.request(method, url + path, headers=headers, params=params, json=body)
    except httpx.HTTPError as exc:
        raise CliError(
            f"cannot reach the wrapper at {url} ({type(exc).__name__})",
            "is it running? `vllm-autoscale serve --local`, or set --url / VLLM_AUTOSCALE_URL "
            "to your Modal URL",
        ) from exc
    if resp.status_code < 400:
        return None if resp.status_code == 204 else resp.json()
    message = _error_message(resp)
    if resp.status_code == 401:
        raise CliError(
            f"the wrapper at {url} refused the API key: {message}",
            "set --api-key or VLLM_AUTOSCALE_API_KEY (the VLLM_WRAPPER_API_KEY of the "
            "vllm-secrets Modal Secret)",
        )
    if resp.status_code == 404 and message in ("Not Found", ""):
        raise CliError(f"{url}{path} does not exist", "is --url the wrapper's base URL?")
    raise CliError(f"{method} {path} answered {resp.status_code}: {message}")


def _show_status(status: dict) -> str:
    window = status.get("scaledown_window")
    line = (
        f"engine {status['state']} | model {status.get('model')} | in flight "
        f"{status.get('in_flight', 0)}, queued {status.get('queue_depth', 0)} | cold starts "
        f"{status.get('cold_starts', 0)} | scaledown window "
        + (f"{window:g} s" if window else "off")
    )
    if status.get("last_error"):
        line += f"\nlast error: {status['last_error']}"
    if deployed := status.get("deployment"):  # an admin key's view of a deployed wrapper
        line += "\n" + _show_deployment(deployed)
    return line


def _show_deployment(deployed: dict[str, Any]) -> str:
    commit = deployed.get("git_commit")
    tree = (
        "no git"
        if commit is None
        else commit[:12] + (" (dirty)" if deployed.get("git_dirty") else "")
    )
    return (
        f"deployed {deployed.get('deployed_at')} | server {deployed.get('package_version')} | "
        f"commit {tree} | settings {str(deployed.get('settings_sha256'))[:12]}"
    )


def status(args: argparse.Namespace) -> int:
    """The wrapper's /status (it never wakes the engine); 1 when the engine failed."""
    answer = call(args, "GET", "/status")
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(_show_status(answer))
    return 1 if answer["state"] == "failed" else 0


def _progress_console() -> Any:
    """Rich's console on stderr, for a spinner; without rich, None: progress a line at a time."""
    try:
        from rich.console import Console  # noqa: PLC0415 - optional here: plain lines without it
    except ImportError:
        return None
    return Console(stderr=True)


def _waking(answer: dict[str, Any], waited: float) -> str:
    """The wait as ``/status`` tells it: the boot's elapsed seconds and the estimate from
    the model's recent boots (the same figures a stream's progress events carry)."""
    boot = answer.get("boot") or {}
    elapsed = boot.get("elapsed_s")
    elapsed = waited if elapsed is None else elapsed
    eta = boot.get("eta_s")
    about = f" of about {elapsed + eta:.0f} s" if eta is not None else ""
    return f"engine {answer['state']}... {elapsed:.0f} s{about}"


def warmup(args: argparse.Namespace) -> int:
    """POST /warmup, then show progress until the engine is warm (or failed, or timed out)."""
    answer = call(args, "POST", "/warmup")
    started = time.monotonic()
    console = _progress_console()
    if args.no_wait or answer["state"] == "warm":
        print(_show_status(answer))
        return 0
    spinner = console.status("waking the engine...") if console else contextlib.nullcontext()
    with spinner as live:
        while answer["state"] in ("cold", "starting"):
            elapsed = time.monotonic() - started
            if elapsed > args.timeout:
                raise CliError(
                    f"the engine is still {answer['state']} after {elapsed:.0f} s",
                    "a first start downloads the weights (minutes): raise --timeout",
                )
            message = _waking(answer, elapsed)
            if live is not None:
                live.update(message)
            else:
                print(message, file=sys.stderr, flush=True)
            time.sleep(2)
            answer = call(args, "GET", "/status")
    if answer["state"] == "failed":
        raise CliError(
            f"the engine failed to start: {answer.get('last_error')}",
            "read the GPU function's log: `modal app logs vllm-autoscale`",
        )
    print(f"warm after {time.monotonic() - started:.0f} s")
    print(_show_status(answer))
    return 0
