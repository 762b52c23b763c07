"""``serve --local``: the wrapper and a local vLLM engine on this machine, until Ctrl-C; or,
with a command after ``--``, until that command ends (run against the warm stack)."""

# ruff: noqa: T201 - a command's output is what it prints

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from ...core.logs import configure_logging
from ...engine.local_model import LocalModelError, default_cache_dir
from ...gateway.keys import KeysFileError
from ...settings.config_file import load_settings
from ..local_stack import LocalStack
from .errors import CliError, need_extra

__all__ = ["serve"]


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                "another process uses that port: pick another with --port, or stop it",
            ) from None


def _engine_log(args: argparse.Namespace) -> str | Path | None:
    """Where vLLM's output goes: --engine-log; with a command, a file in the cache folder
    (its output is the point, and a failed start still quotes the file's last lines)."""
    if args.engine_log is not None or not args.command:
        return args.engine_log
    path = default_cache_dir() / "engine.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"vLLM's log: {path}", flush=True)
    return path


def _run_command(stack: LocalStack, command: list[str], stop: threading.Event) -> int:
    """Once the engine is warm, the command with VLLM_AUTOSCALE_URL set: its exit code."""
    print("waiting for the engine to be warm...", flush=True)
    stack.wait_warm()
    env = {**os.environ, "VLLM_AUTOSCALE_URL": stack.url}
    if stack.settings.wrapper_api_key:
        env.setdefault("VLLM_AUTOSCALE_API_KEY", stack.settings.wrapper_api_key.get_secret_value())
    child = subprocess.Popen([sys.executable if c == "python" else c for c in command], env=env)
    while child.poll() is None and not stop.is_set():
        stop.wait(0.2)
    if child.poll() is None:
        child.terminate()
    return child.wait()


def _serve_until_stopped(stack: LocalStack, warm: bool, stop: threading.Event) -> int:
    window = stack.transport.scaledown_window
    print(
        "engine starts on the first request (or POST /warmup) and stops after "
        f"{window:g} idle seconds; Ctrl-C stops everything"
        if window
        else "engine stays up until Ctrl-C",
        flush=True,
    )
    if warm:
        stack.wait_warm()
        print("engine warm", flush=True)
    stop.wait()
    return 0


def serve(args: argparse.Namespace) -> int:
    if not args.local:
        print(
            "serve runs the local stack (--local); on Modal the wrapper is served by "
            "`vllm-autoscale deploy`.",
            file=sys.stderr,
        )
        return 2
    need_extra("vllm", "local", "`vllm-autoscale serve --local`")
    _check_port_free(args.host, args.port)
    # With a command to run, its output is the point: only warnings from the service.
    configure_logging(args.log_level or ("WARNING" if args.command else "INFO"))
    engine_log = _engine_log(args)
    try:
        settings = load_settings(args.config).settings
    except ValueError as exc:
        raise CliError(f"bad settings: {exc}", "see docs/deploy-modal.md for settings") from None
    try:
        stack = LocalStack(
            settings=settings,
            host=args.host,
            port=args.port,
            scaledown_window=args.scaledown_window,
            warm=args.warm or bool(args.command),
            engine_log=engine_log,
            access_log=False,
            embeddings=args.embeddings,
        )
    except LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeysFileError as exc:  # the wrapper reads it at start: say which file, no traceback
        raise CliError(str(exc), "fix the file or unset VLLM_API_KEYS_FILE") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stack.start()
        model = stack.transport.model_name
        print(f"vllm-autoscale wrapper on {stack.url} (model {model})", flush=True)
        if args.command:
            return _run_command(stack, args.command, stop)
        return _serve_until_stopped(stack, args.warm, stop)
    finally:
        stack.stop()
        print("stopped wrapper and engine", flush=True)
