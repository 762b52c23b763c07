"""vLLM's output: passed on to where it belongs, its tail kept, and a failed start's cause.

vLLM writes its log to the pipe of its process. ``OutputTee`` reads it in a thread, writes
each line on (a log file, or this process's stderr, which on Modal is the container's log)
and keeps the last lines in memory, so that a failed start can be explained wherever the
output went. ``root_cause`` finds, in those lines, the exception that ended the start and
returns it short and without file paths: the caller gets that; the operator gets the whole
tail in the wrapper's log.
"""

from __future__ import annotations

import collections
import logging
import re
import sys
import threading
from typing import IO

__all__ = ["OutputTee", "root_cause"]

log = logging.getLogger("vllm_autoscale.engine.vllm")

# "ValueError: ...", "torch.OutOfMemoryError: ...", after vLLM's and multiprocessing's
# prefixes ("(EngineCore pid=12) ", "ERROR 11-24 10:00:00 [core.py:700] ").
_EXCEPTION = re.compile(r"(?:^|\s)((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception)): (.+)$")
_PATH = re.compile(r"(?:/[\w.@+-]+){2,}/?")
_NOISE = ("Traceback", "resource_tracker", "warnings.warn", "DeprecationWarning", "UserWarning")


def root_cause(lines: list[str], limit: int = 300) -> str | None:
    """The last exception in ``lines`` as ``"Name: message"``, paths replaced by ``<path>``."""
    for line in reversed(lines):
        if any(noise in line for noise in _NOISE):
            continue
        match = _EXCEPTION.search(line.strip())
        if match:
            name = match.group(1).rsplit(".", 1)[-1]
            message = _PATH.sub("<path>", match.group(2)).strip()
            return f"{name}: {message}"[:limit]
    return None


class OutputTee:
    """Reads a process's output pipe in a daemon thread: writes it on, keeps its tail."""

    def __init__(self, pipe: IO[bytes], sink: IO[bytes] | None, keep: int = 400) -> None:
        self._pipe, self._sink = pipe, sink
        self._tail: collections.deque[str] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self._expected_exit = False
        self._thread = threading.Thread(target=self._run, name="vllm-output", daemon=True)
        self._thread.start()

    def expect_exit(self) -> None:
        """The process is being stopped on purpose (a scale-down): what it prints from now
        on (vLLM logs its engine's shutdown as errors) is not the service's error. A log
        file still gets it; stderr, shared with the wrapper's log, gets it at DEBUG only."""
        self._expected_exit = True

    def _run(self) -> None:
        sink = self._sink if self._sink is not None else sys.stderr.buffer
        for raw in iter(self._pipe.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            with self._lock:
                self._tail.append(line)
            if self._expected_exit and self._sink is None:
                log.debug("vLLM while stopping: %s", line)
                continue
            try:
                sink.write(raw)
                sink.flush()
            except (OSError, ValueError):  # the sink closed (stop() closes a log file)
                pass
        self._pipe.close()

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._tail)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
