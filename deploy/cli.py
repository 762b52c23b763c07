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


def _cost(args: argparse.Namespace) -> int:
    import json

    from deploy.cost import PRESETS, curve, estimate, inputs_from_preset

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
        print(
            "  always-on is cheaper above "
            + (
                f"{even:.2f} h/day of use"
                if even is not None
                else "no amount of use (autoscale wins)"
            )
        )
    if args.plot:
        _plot_cost(curve(inputs), args.plot, args.preset)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _plot_cost(points: list[dict[str, float]], path: str, title: str) -> None:
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
