"""``vllm-autoscale``: run the service locally, deploy it to Modal, and talk to a deployment."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

from deploy.logs import configure_logging

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from deploy.local_model import LocalModelError
    from deploy.local_stack import LocalStack

    if not args.local:
        print(
            "serve runs the local stack (--local); on Modal the wrapper is served by "
            "`vllm-autoscale deploy`.",
            file=sys.stderr,
        )
        return 2
    # With a command to run, its output is the point: only warnings from the service.
    configure_logging(args.log_level or ("WARNING" if args.command else "INFO"))
    try:
        stack = LocalStack(
            host=args.host,
            port=args.port,
            scaledown_window=args.scaledown_window,
            warm=args.warm or bool(args.command),
            engine_log=args.engine_log,
            access_log=False,
        )
    except LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    code = 0
    try:
        stack.start()
        print(
            f"vllm-autoscale wrapper on {stack.url} (model {stack.transport.model_name})",
            flush=True,
        )
        if args.command:
            print("waiting for the engine to be warm...", flush=True)
            stack.wait_warm()
            env = {**os.environ, "VLLM_AUTOSCALE_URL": stack.url}
            if stack.settings.wrapper_api_key:
                env.setdefault(
                    "VLLM_AUTOSCALE_API_KEY", stack.settings.wrapper_api_key.get_secret_value()
                )
            command = [sys.executable if c == "python" else c for c in args.command]
            child = subprocess.Popen(command, env=env)
            while child.poll() is None and not stop.is_set():
                stop.wait(0.2)
            if child.poll() is None:
                child.terminate()
            code = child.wait()
        else:
            window = stack.transport.scaledown_window
            print(
                "engine starts on the first request (or POST /warmup) and stops after "
                f"{window:g} idle seconds; Ctrl-C stops everything"
                if window
                else "engine stays up until Ctrl-C",
                flush=True,
            )
            if args.warm:
                stack.wait_warm()
                print("engine warm", flush=True)
            stop.wait()
    finally:
        stack.stop()
        print("stopped wrapper and engine", flush=True)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-autoscale", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    serve = sub.add_parser(
        "serve",
        help="run wrapper + engine locally",
        description="Run the wrapper and a local vLLM engine. With a command after --, wait "
        "until the engine is warm, run the command with VLLM_AUTOSCALE_URL set, then stop.",
    )
    serve.add_argument("--local", action="store_true", help="run the engine on this machine")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--scaledown-window", type=float, default=None,
        help="idle seconds before the engine stops "
        "(default: VLLM_SCALEDOWN_WINDOW or 120; 0 = never)",
    )  # fmt: skip
    serve.add_argument(
        "--warm", action="store_true", help="start the engine now, not on the first request"
    )
    serve.add_argument("--engine-log", default=None, help="write vLLM's output to this file")
    serve.add_argument("--log-level", default=None, help="INFO by default; WARNING with a command")
    serve.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- COMMAND to run against the stack"
    )
    serve.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    logging.captureWarnings(True)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
