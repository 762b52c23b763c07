"""vLLM's output around a scale-down: what it prints while it is stopped on purpose (vLLM
logs its engine's shutdown as errors) never reaches the wrapper's stderr as such; a log file
still gets all of it; the tail keeps it for who asks."""

from __future__ import annotations

import io
import logging
import os
import time

import pytest

from deploy.engine.log import OutputTee


def _tee(sink: io.BytesIO | None) -> tuple[OutputTee, int]:
    read, write = os.pipe()
    return OutputTee(os.fdopen(read, "rb"), sink), write


def _wait(tee: OutputTee, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(tee.lines()) < n:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_lines_after_an_expected_exit_go_to_debug_not_to_stderr(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vllm_autoscale.engine.vllm")
    tee, write = _tee(None)
    os.write(write, b"INFO serving\n")
    _wait(tee, 1)
    tee.expect_exit()
    os.write(write, b"ERROR EngineDeadError: EngineCore encountered an issue\n")
    os.close(write)
    tee.join(5)
    err = capfd.readouterr().err
    assert "INFO serving" in err and "EngineDeadError" not in err
    assert any("EngineDeadError" in r.getMessage() and r.levelno == logging.DEBUG
               for r in caplog.records)  # fmt: skip
    assert tee.lines()[-1].endswith("EngineCore encountered an issue")


def test_a_log_file_keeps_everything() -> None:
    sink = io.BytesIO()
    tee, write = _tee(sink)
    tee.expect_exit()
    os.write(write, b"ERROR EngineDeadError: gone\n")
    os.close(write)
    tee.join(5)
    assert b"EngineDeadError" in sink.getvalue()
