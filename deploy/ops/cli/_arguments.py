"""Each command's flags, one ``add_*`` function per command: what ``--help`` shows.

Here rather than beside each command's code, so that building the parser imports none of it
(``__init__.py``: a command's module is imported when the command runs).
"""

from __future__ import annotations

import argparse
from typing import Any

from ._output import _amount, _count, _day

__all__ = [
    "add_cost",
    "add_deploy",
    "add_keys",
    "add_remote",
    "add_serve",
    "add_smoke",
    "add_usage",
]


def _add_config_arg(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--config", default=None, metavar="PATH",
        help="the settings file (default: VLLM_CONFIG, else ./vllm-autoscale.toml if there "
        "is one); VLLM_* variables override it",
    )  # fmt: skip


def add_serve(sub: Any) -> None:
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
    serve.add_argument(
        "--no-embeddings", dest="embeddings", action="store_false",
        help="serve the chat model only (by default all-MiniLM-L6-v2 is served beside it, "
        "its engine started by the first embeddings request)",
    )  # fmt: skip
    serve.add_argument("--log-level", default=None, help="INFO by default; WARNING with a command")
    _add_config_arg(serve)
    serve.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- COMMAND to run against the stack"
    )


def add_cost(sub: Any) -> None:
    cost = sub.add_parser(
        "cost",
        help="monthly cost: always on vs scaled to zero; with traffic, which window to pick",
        description="Without --traffic or --profile: the cost model for hours of use a day. "
        "With one: replay the traffic under each scaledown window (and warm schedule) and "
        "recommend the cheapest setting within a wait budget (docs/cold-starts.md).",
    )
    cost.add_argument("--preset", default="modal-a100-80gb", help="seed, modal-a100-80gb, ...")
    cost.add_argument("--hours", type=float, default=None, help="hours of use per day")
    cost.add_argument(
        "--requests-per-hour", type=float, default=None,
        help="request rate during the hours of use; with --profile, its rate (default 40)",
    )  # fmt: skip
    cost.add_argument("--gpu-price", type=float, default=None, help="USD per GPU-hour")
    cost.add_argument("--gpu-count", type=int, default=None)
    cost.add_argument(
        "--scaledown-window", type=float, default=None,
        help="idle seconds before the GPU is released; with traffic, one more to try",
    )  # fmt: skip
    cost.add_argument("--boot-seconds", type=float, default=None)
    cost.add_argument("--wrapper-price", type=float, default=None, help="USD per wrapper-hour")
    _add_advisor_args(cost)
    _add_config_arg(cost)
    cost.add_argument("--json", action="store_true")
    cost.add_argument(
        "--plot", default=None, metavar="FILE",
        help="write a PNG: cost vs hours/day, or with traffic, cost vs requests that wait",
    )  # fmt: skip


def _add_advisor_args(cost: argparse.ArgumentParser) -> None:
    """The window advisor's: the traffic (a trace or a profile), the wait budget, schedules."""
    traffic = cost.add_mutually_exclusive_group()
    traffic.add_argument(
        "--traffic", default=None, metavar="FILE",
        help="request times: the wrapper's JSON log, a CSV with a timestamp column, "
        "or one timestamp a line",
    )  # fmt: skip
    traffic.add_argument(
        "--profile", default=None, choices=("office-hours", "bursty", "uniform"),
        help="a synthetic month of traffic instead of a trace",
    )  # fmt: skip
    cost.add_argument("--seed", type=int, default=0, help="the --profile's random seed")
    cost.add_argument(
        "--zone", default="UTC",
        help="the time zone of the busy hours warm schedules are derived from, and of the "
        "office-hours profile",
    )  # fmt: skip
    cost.add_argument(
        "--max-wait-share", type=float, default=None,
        help="wait budget: the share of requests that may wait for a boot "
        "(default 0.05 unless --max-mean-wait)",
    )  # fmt: skip
    cost.add_argument(
        "--max-mean-wait", type=float, default=None,
        help="wait budget: the mean wait in seconds over all requests",
    )  # fmt: skip
    cost.add_argument(
        "--warm-schedule", action="append", default=None, metavar="SCHEDULE",
        help="a warm schedule to try as well, e.g. '0 9 * * mon-fri 9h Europe/Paris' "
        "(repeatable)",
    )  # fmt: skip


def _add_http_args(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--url", default=None, help="wrapper URL (default VLLM_AUTOSCALE_URL)")
    cmd.add_argument("--api-key", default=None, help="default VLLM_AUTOSCALE_API_KEY")


def add_remote(sub: Any) -> None:
    """``status`` and ``warmup``."""
    for name, text in (
        ("status", "engine state, queue and cold starts of a wrapper (never wakes it)"),
        ("warmup", "wake the engine and show progress until it is warm"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        _add_http_args(cmd)
        if name == "status":
            cmd.add_argument("--json", action="store_true")
        else:
            cmd.add_argument("--no-wait", action="store_true", help="ask and return at once")
            cmd.add_argument("--timeout", type=float, default=900)


def add_deploy(sub: Any) -> None:
    deploy = sub.add_parser(
        "deploy",
        help="modal deploy the wrapper and the GPU class",
        description="Check the vllm-secrets Modal Secret exists, then `modal deploy`. "
        "Settings are the settings file (vllm-autoscale.toml) under the VLLM_* environment "
        "variables (docs/deploy-modal.md).",
    )
    deploy.add_argument(
        "--dry-run",
        action="store_true",
        help="print the settings (each with its source), the engine's parsers and each "
        "container's image and files",
    )
    _add_config_arg(deploy)


def add_smoke(sub: Any) -> None:
    smoke = sub.add_parser(
        "smoke",
        help="health, one chat, one stream, one forced tool call against a wrapper",
        description="Check a running wrapper after a deploy: health, a chat, a stream and a "
        "tool call with a forced tool choice. Exits 1 at the first that fails, naming it.",
    )
    smoke.add_argument("url", help="the wrapper's base URL")
    smoke.add_argument("--api-key", default=None, help="default VLLM_AUTOSCALE_API_KEY")
    smoke.add_argument("--model", default=None, help="a served model (default: the default)")
    smoke.add_argument(
        "--timeout", type=float, default=600, help="seconds a check may wait (a cold start)"
    )


def add_usage(sub: Any) -> None:
    usage = sub.add_parser(
        "usage",
        help="requests, tokens, GPU seconds and cost per day, key and model",
        description="Usage from the wrapper's ledger: a key sees its own, an admin key every "
        "key's (or one, with --key). Days are UTC and inclusive.",
    )
    _add_http_args(usage)
    usage.add_argument("--start", type=_day, default=None, help="first day, YYYY-MM-DD")
    usage.add_argument("--end", type=_day, default=None, help="last day, YYYY-MM-DD")
    usage.add_argument("--key", default=None, help="only this key's usage (admin keys)")
    usage.add_argument("--json", action="store_true", help="the wrapper's JSON answer")


def _add_key_args(cmd: argparse.ArgumentParser, update: bool = False) -> None:
    cmd.add_argument("name", help="the key's name: 1-64 of A-Z a-z 0-9 _ . @ -")
    # An update changes only what it is given: no default role.
    cmd.add_argument("--role", choices=("user", "admin"), default=None if update else "user")
    default = "unchanged" if update else "default VLLM_DEFAULT_*"
    for flag, unit in (("--rpm", "requests"), ("--tpm", "tokens")):
        cmd.add_argument(flag, type=_count, help=f"{unit} per minute ({default})")
    cmd.add_argument("--max-streams", type=_count, help="concurrent requests")
    cmd.add_argument("--budget", type=_amount, help="monthly budget, USD")
    if update:
        cmd.add_argument(
            "--clear", action="append", choices=("rpm", "tpm", "max-streams", "budget"),
            metavar="LIMIT",
            help="set LIMIT (rpm, tpm, max-streams, budget) back to its VLLM_DEFAULT_* "
            "(repeatable)",
        )  # fmt: skip


def add_keys(sub: Any) -> None:
    """``keys new`` (offline), ``keys list``, ``keys create``, ``keys update``, ``keys revoke``
    (a wrapper's)."""
    keys = sub.add_parser("keys", help="make API keys; list, create, update and revoke a wrapper's")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    new = keys_sub.add_parser(
        "new",
        help="generate a key offline: print it once, and its entry for a keys file",
        description="Generate a key on this machine (no wrapper involved). The key is printed "
        "once; the entry for VLLM_API_KEYS_FILE (or VLLM_API_KEYS) holds only its sha256.",
    )
    _add_key_args(new)
    new.add_argument("--format", choices=("toml", "json"), default="toml")
    for name, text in (
        ("list", "every key of the wrapper: role, limits, source, spend this month (admin key)"),
        ("create", "create a key on the wrapper; it is printed once (admin key)"),
        ("update", "change a key's role or limits in place; its secret stays (admin key)"),
        ("revoke", "revoke a key created on the wrapper (admin key)"),
    ):
        cmd = keys_sub.add_parser(name, help=text, description=text)
        _add_http_args(cmd)
        if name == "list":
            cmd.add_argument("--json", action="store_true")
        elif name == "create":
            _add_key_args(cmd)
        elif name == "update":
            _add_key_args(cmd, update=True)
        else:
            cmd.add_argument("name")
