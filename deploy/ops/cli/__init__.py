"""``vllm-autoscale``: run the service locally, deploy it to Modal, and talk to a deployment."""

# ruff: noqa: T201 - a command's output is what it prints

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from . import _arguments
from .errors import CliError

__all__ = ["COMMANDS", "CliError", "build_parser", "main"]

# The map of commands: each one's module in this package, and the function there that runs
# it. A command's module is imported when that command runs, not before: `serve` brings in
# the wrapper and `deploy` the settings (seconds of imports), and `vllm-autoscale status`
# must start at once.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "serve"),
    "cost": ("cost", "cost"),
    "status": ("remote", "status"),
    "warmup": ("remote", "warmup"),
    "deploy": ("deploy", "deploy"),
    "smoke": ("smoke", "smoke"),
    "usage": ("usage", "usage"),
    "keys new": ("keys", "keys_new"),
    "keys list": ("keys", "keys_list"),
    "keys create": ("keys", "keys_create"),
    "keys update": ("keys", "keys_update"),
    "keys revoke": ("keys", "keys_revoke"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-autoscale", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    _arguments.add_serve(sub)
    _arguments.add_cost(sub)
    _arguments.add_remote(sub)  # status, warmup
    _arguments.add_deploy(sub)
    _arguments.add_smoke(sub)
    _arguments.add_usage(sub)
    _arguments.add_keys(sub)
    return parser


def _command(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    name = " ".join(filter(None, (args.cmd, getattr(args, "keys_cmd", None))))
    module, function = COMMANDS[name]
    return getattr(importlib.import_module(f".{module}", __name__), function)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    logging.captureWarnings(True)
    try:
        return int(_command(args)(args) or 0)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
