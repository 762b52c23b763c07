"""The warm-up machinery ``ChatVLLMAutoscale(auto_warmup="on_init")`` and
``WarmupCallbackHandler`` share: ``start_warmup`` and its per-URL rate limit.

A module of its own so that the dependencies run one way: ``chat_models`` uses it, and
``warmup`` (the public handler, which re-exports these names) uses both. Failures log to
``langchain_vllm_autoscale.warmup``, the logger the documentation names.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from langchain_vllm_autoscale._http import ServiceClient

__all__ = [
    "WARMUP_INTERVAL_S",
    "WARMUP_PATH",
    "WARMUP_TIMEOUT_S",
    "log",
    "start_warmup",
]

WARMUP_PATH = "/warmup"
WARMUP_INTERVAL_S = 10.0
"""At most one ``POST /warmup`` per this many seconds per service URL (per process)."""
WARMUP_TIMEOUT_S = 30.0
"""Time-out of the warm-up request; ``/warmup`` answers at once, the engine boots behind it."""

log = logging.getLogger("langchain_vllm_autoscale.warmup")


class _RateLimit:
    """When each URL last got a warm-up; ``allow`` claims the slot if the interval passed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, interval: float) -> bool:
        with self._lock:
            now = self.clock()
            last = self._last.get(key)
            if last is not None and now - last < interval:
                return False
            self._last[key] = now
            return True

    def clear(self) -> None:
        with self._lock:
            self._last.clear()


_LIMIT = _RateLimit()


def _post(client: ServiceClient, timeout: float) -> None:
    try:
        answer = client.request_quick("POST", WARMUP_PATH, timeout=timeout)
    except Exception as exc:  # a warm-up is a hint: it never fails anyone
        log.warning("warm-up of %s failed: %s", client.base_url, exc)
    else:
        log.debug("warm-up of %s sent: %s", client.base_url, answer)


def start_warmup(
    client: ServiceClient, *, interval: float | None = None, timeout: float = WARMUP_TIMEOUT_S
) -> threading.Thread | None:
    """Send ``POST /warmup`` from a daemon thread; return at once, never raise.

    Returns the thread, or None when the rate limit skipped it (a warm-up went to the same
    URL less than ``interval`` seconds ago; default ``WARMUP_INTERVAL_S``).
    """
    try:
        gap = WARMUP_INTERVAL_S if interval is None else interval
        if not _LIMIT.allow(client.base_url, gap):
            log.debug("warm-up of %s skipped: one was sent in the last %g s", client.base_url, gap)
            return None
        thread = threading.Thread(
            target=_post, args=(client, timeout), name="vllm-autoscale-warmup", daemon=True
        )
        thread.start()
        return thread
    except Exception as exc:  # e.g. no new thread at interpreter shutdown
        log.warning("warm-up of %s not started: %s", client.base_url, exc)
        return None
