"""The command's failures: ``CliError``, one readable line plus a hint; ``need_extra`` for an
optional dependency that is not installed."""

from __future__ import annotations

import importlib.util

from ...core.errors import ServiceError

__all__ = ["CliError", "need_extra"]


class CliError(ServiceError):
    """One readable line, plus a hint: ``main`` prints ``error: ...`` and ``hint: ...`` on
    stderr, no traceback, and exits with ``exit_code``."""

    error_type = "cli_error"
    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def need_extra(module: str, extra: str, what: str) -> None:
    """Fail in one line, naming the extra, when an optional dependency is missing."""
    if importlib.util.find_spec(module) is None:
        raise CliError(
            f"{what} needs the '{extra}' extra: pip install './deploy[{extra}]' from a clone "
            f"(the vllm-autoscale-server[{extra}] distribution)"
        )
