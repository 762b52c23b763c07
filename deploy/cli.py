"""``vllm-autoscale``: run the service locally, deploy it to Modal, and talk to a deployment."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .logs import configure_logging

__all__ = ["main"]


def _need(module: str, extra: str, what: str) -> None:
    """Fail in one line, naming the extra, when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise CliError(
            f"{what} needs the '{extra}' extra: pip install './deploy[{extra}]' from a clone "
            f"(the vllm-autoscale-server[{extra}] distribution)"
        )


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                "another process uses that port: pick another with --port, or stop it",
            ) from None


def _serve(args: argparse.Namespace) -> int:
    if not args.local:
        print(
            "serve runs the local stack (--local); on Modal the wrapper is served by "
            "`vllm-autoscale deploy`.",
            file=sys.stderr,
        )
        return 2
    _need("vllm", "local", "`vllm-autoscale serve --local`")
    _check_port_free(args.host, args.port)
    from .local_model import LocalModelError, default_cache_dir
    from .local_stack import LocalStack

    # With a command to run, its output is the point: only warnings from the service, and
    # vLLM's own output in a file (a failed start still quotes its last lines).
    configure_logging(args.log_level or ("WARNING" if args.command else "INFO"))
    engine_log = args.engine_log
    if engine_log is None and args.command:
        engine_log = default_cache_dir() / "engine.log"
        engine_log.parent.mkdir(parents=True, exist_ok=True)
        print(f"vLLM's log: {engine_log}", flush=True)
    try:
        stack = LocalStack(
            host=args.host,
            port=args.port,
            scaledown_window=args.scaledown_window,
            warm=args.warm or bool(args.command),
            engine_log=engine_log,
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


def _cost(args: argparse.Namespace) -> int:
    import json

    from .cost import PRESETS, curve, estimate, inputs_from_preset

    try:
        inputs = inputs_from_preset(
            args.preset,
            hours_per_day=args.hours,
            requests_per_hour=args.requests_per_hour,
            gpu_price_per_hour=args.gpu_price,
            gpu_count=args.gpu_count,
            scaledown_window=args.scaledown_window,
            boot_seconds=args.boot_seconds,
            wrapper_price_per_hour=args.wrapper_price,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = estimate(inputs)
    if args.json:
        print(json.dumps({"preset": args.preset, **report.to_dict()}, indent=2))
    else:
        i = inputs
        even = report.break_even_hours_per_day
        print(f"preset {args.preset}: {PRESETS[args.preset]['description']}")
        print(
            f"  GPU ${i.gpu_price_per_hour:.2f}/h x {i.gpu_count}, {i.hours_per_day:g} h/day of use"
            + (f" at {i.requests_per_hour:g} requests/h" if i.requests_per_hour else "")
            + f", window {i.scaledown_window:g} s, boot {i.boot_seconds:g} s"
        )
        print(f"  always on                      ${report.always_on_monthly:10,.2f}/month")
        print(
            f"  autoscaled, seed's formula     ${report.seed_autoscaled_monthly:10,.2f}/month"
            f"   saving {report.seed_saving:.1%}"
        )
        print(
            f"  autoscaled, with boots + tails ${report.autoscaled_monthly:10,.2f}/month"
            f"   saving {report.saving:.1%}"
        )
        gpu_hours, wakes = report.gpu_hours_per_day, report.wakes_per_day
        print(f"  GPU billed {gpu_hours:.2f} h/day over {wakes:.1f} wakes")
        if even is not None:
            print(f"  break-even: always-on is cheaper above {even:.2f} h/day of use")
        else:
            print("  break-even: none, autoscaling is cheaper at any hours of use")
    if args.plot:
        _plot_cost(curve(inputs), args.plot, args.preset)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _plot_cost(points: list[dict[str, float]], path: str, title: str) -> None:
    _need("matplotlib", "plot", "`vllm-autoscale cost --plot`")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    hours = [p["hours_per_day"] for p in points]
    ax.plot(hours, [p["autoscaled"] for p in points], label="autoscaled (boots + idle tails)")
    ax.plot(hours, [p["always_on"] for p in points], label="always on", linestyle="--")
    ax.set_xlabel("hours of use per day")
    ax.set_ylabel("USD per month")
    ax.set_title(f"Monthly cost ({title})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class CliError(Exception):
    """One readable line, plus a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _call(args: argparse.Namespace, method: str, path: str) -> dict:
    import httpx

    url = (args.url or os.environ.get("VLLM_AUTOSCALE_URL") or "http://127.0.0.1:8000").rstrip("/")
    key = args.api_key or os.environ.get("VLLM_AUTOSCALE_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        resp = httpx.request(method, url + path, headers=headers, timeout=30, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise CliError(
            f"cannot reach the wrapper at {url} ({type(exc).__name__})",
            "is it running? `vllm-autoscale serve --local`, or set --url / VLLM_AUTOSCALE_URL "
            "to your Modal URL",
        ) from exc
    if resp.status_code == 401:
        raise CliError(
            f"the wrapper at {url} refused the API key",
            "set --api-key or VLLM_AUTOSCALE_API_KEY (the VLLM_WRAPPER_API_KEY of the "
            "vllm-secrets Modal Secret)",
        )
    if resp.status_code == 404:
        raise CliError(f"{url}{path} does not exist", "is --url the wrapper's base URL?")
    if resp.status_code >= 400:
        raise CliError(f"{method} {path} answered {resp.status_code}: {resp.text[:300]}")
    return resp.json()


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
    return line


def _status(args: argparse.Namespace) -> int:
    status = _call(args, "GET", "/status")
    if args.json:
        import json

        print(json.dumps(status, indent=2))
    else:
        print(_show_status(status))
    return 1 if status["state"] == "failed" else 0


def _warmup(args: argparse.Namespace) -> int:
    import time

    status = _call(args, "POST", "/warmup")
    started = time.monotonic()
    try:
        from rich.console import Console

        console: Any = Console(stderr=True)
    except ImportError:
        console = None
    if args.no_wait or status["state"] == "warm":
        print(_show_status(status))
        return 0
    spinner = console.status("waking the engine...") if console else contextlib.nullcontext()
    with spinner as live:
        while status["state"] in ("cold", "starting"):
            elapsed = time.monotonic() - started
            if elapsed > args.timeout:
                raise CliError(
                    f"the engine is still {status['state']} after {elapsed:.0f} s",
                    "a first start downloads the weights (minutes): raise --timeout",
                )
            message = f"engine {status['state']}... {elapsed:.0f} s"
            if live is not None:
                live.update(message)
            else:
                print(message, file=sys.stderr, flush=True)
            time.sleep(2)
            status = _call(args, "GET", "/status")
    if status["state"] == "failed":
        raise CliError(
            f"the engine failed to start: {status.get('last_error')}",
            "read the GPU function's log: `modal app logs vllm-autoscale`",
        )
    print(f"warm after {time.monotonic() - started:.0f} s")
    print(_show_status(status))
    return 0


SECRET_NAME = "vllm-secrets"
OWN_TEMPLATE = "the model's own"


def _secret_hint(settings: Any) -> str:
    token = " HF_TOKEN=hf_..." if settings.model.startswith("meta-llama/") else ""
    return (
        "create it (the key is what your clients send as VLLM_AUTOSCALE_API_KEY):\n"
        "  export VLLM_AUTOSCALE_API_KEY=$(python3 -c 'import secrets; "
        "print(secrets.token_urlsafe(32))')\n"
        f"  modal secret create {SECRET_NAME} VLLM_WRAPPER_API_KEY=$VLLM_AUTOSCALE_API_KEY{token}"
    )


def _check_secret(settings: Any) -> None:
    """The Secret both containers mount must exist before the deploy, or nothing serves."""
    import modal
    from modal.exception import AuthError, NotFoundError

    try:
        modal.Secret.from_name(SECRET_NAME).hydrate()
    except AuthError as exc:
        raise CliError("not logged in to Modal", "run `modal token new` once") from exc
    except NotFoundError as exc:
        raise CliError(
            f"the Modal Secret {SECRET_NAME!r} does not exist", _secret_hint(settings)
        ) from exc


def _print_manifests(settings: Any) -> None:
    from .modal_manifest import collect

    try:
        manifests = collect()
    except RuntimeError as exc:
        raise CliError(str(exc)) from exc
    for name, m in manifests.items():
        print(f"\ncontainer {name} (imports {m['module']}; GPU {m['gpu'] or 'none'})")
        print(f"  image   {m['base'].removeprefix('FROM ')} + {', '.join(m['packages'])}")
        print(f"  env     {', '.join(sorted(m['env']))}  (secrets: {', '.join(m['secrets'])})")
        print(f"  files   {len(m['files'])}")
        for remote in m["files"]:
            print(f"    {remote}")


def _deploy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config import Settings

    try:
        settings = Settings()
    except ValueError as exc:
        raise CliError(
            f"bad settings: {exc}", "see docs/deploy-modal.md for VLLM_* settings"
        ) from exc
    app_file = Path(__file__).with_name("modal_app.py")
    # modal from this environment, whatever is on PATH; file mode, as the guide runs it.
    command = [sys.executable, "-m", "modal", "deploy", str(app_file)]
    print(
        f"deploying app vllm-autoscale: model {settings.model} on {settings.gpu_spec} "
        f"(tensor parallel {settings.tp_size}), mode {settings.mode}, scaledown window "
        f"{settings.scaledown_window} s, max {settings.max_containers} GPU container(s) "
        f"(a new one past {settings.concurrency_target} requests each), "
        f"{settings.max_num_seqs} concurrent sequences, GPU snapshot "
        f"{'on' if settings.gpu_snapshot else 'off'}"
    )
    template = settings.chat_template_path
    print(
        f"engine: tool parser {settings.tool_parser or 'none (tool calling off)'}, chat "
        f"template {Path(template).name if template else OWN_TEMPLATE}, reasoning "
        f"parser {settings.reasoning or 'none'}"
    )
    if warning := settings.parser_warning():
        print(f"warning: {warning}", file=sys.stderr)
    _need("modal", "modal", "`vllm-autoscale deploy`")
    if app_file.parent.name != "deploy":
        # modal_app.py imports `deploy`, and modal ships the checkout's files: an installed
        # copy of the server is not a checkout.
        raise CliError(
            "`vllm-autoscale deploy` ships the files of a clone of the repository; run it "
            "from one (git clone, then pip install -e . -e './deploy[modal]')"
        )
    if args.dry_run:
        _print_manifests(settings)
        print("\n$ modal deploy " + str(app_file))
        return 0
    _check_secret(settings)
    print("$ modal deploy " + str(app_file))
    return subprocess.call(command, cwd=app_file.parent.parent)


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
    serve.add_argument(
        "--engine-log",
        default=None,
        help="write vLLM's output here (default: stderr; with a command, the cache folder)",
    )
    serve.add_argument("--log-level", default=None, help="INFO by default; WARNING with a command")
    serve.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- COMMAND to run against the stack"
    )
    serve.set_defaults(func=_serve)

    cost = sub.add_parser("cost", help="monthly cost: always on vs scaled to zero")
    cost.add_argument("--preset", default="modal-a100-80gb", help="seed, modal-a100-80gb, ...")
    cost.add_argument("--hours", type=float, default=None, help="hours of use per day")
    cost.add_argument("--requests-per-hour", type=float, default=None)
    cost.add_argument("--gpu-price", type=float, default=None, help="USD per GPU-hour")
    cost.add_argument("--gpu-count", type=int, default=None)
    cost.add_argument("--scaledown-window", type=float, default=None)
    cost.add_argument("--boot-seconds", type=float, default=None)
    cost.add_argument("--wrapper-price", type=float, default=None, help="USD per wrapper-hour")
    cost.add_argument("--json", action="store_true")
    cost.add_argument("--plot", default=None, help="write a PNG of cost vs hours/day")
    cost.set_defaults(func=_cost)

    for name, func, text in (
        ("status", _status, "engine state, queue and cold starts of a wrapper (never wakes it)"),
        ("warmup", _warmup, "wake the engine and show progress until it is warm"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--url", default=None, help="wrapper URL (default VLLM_AUTOSCALE_URL)")
        cmd.add_argument("--api-key", default=None, help="default VLLM_AUTOSCALE_API_KEY")
        cmd.set_defaults(func=func)
        if name == "status":
            cmd.add_argument("--json", action="store_true")
        else:
            cmd.add_argument("--no-wait", action="store_true", help="ask and return at once")
            cmd.add_argument("--timeout", type=float, default=900)

    deploy = sub.add_parser(
        "deploy",
        help="modal deploy the wrapper and the GPU class",
        description="Check the vllm-secrets Modal Secret exists, then `modal deploy`. "
        "Settings are the VLLM_* environment variables (docs/deploy-modal.md).",
    )
    deploy.add_argument(
        "--dry-run",
        action="store_true",
        help="print the settings, the engine's parsers and each container's image and files",
    )
    deploy.set_defaults(func=_deploy)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    logging.captureWarnings(True)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
