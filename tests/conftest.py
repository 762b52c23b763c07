"""Shared test settings. Integration tests get the live local stack from
``tests/integration_tests/conftest.py``; unit tests run with the network disabled.

The suite runs on pytest-xdist workers (``addopts`` in pyproject.toml), scheduled here:
- a run with tests that run vLLM (the live stack's, ``ENGINE_TESTS``): all of them are one
  unit of work, so one worker runs them, in file order, one engine at a time; the offline
  tests (unit, packaging, the other container tests) go to the other worker(s) module by
  module meanwhile;
- a run without (``pytest tests/unit_tests``): idle workers steal tests from busy ones, which
  balances best.
``-n 0`` runs everything in one process, as before."""

import os
import sys
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling, WorkStealingScheduling

# The gateway's state (ledger, stored keys) stays in memory unless a test names a store:
# test runs never write into the user's ~/.local/state.
os.environ.setdefault("VLLM_STATE_URL", "memory://")

# Bytecode caches, even where PYTHONDONTWRITEBYTECODE is set: the suite starts many
# interpreters (workers, the CLI, examples, vLLM's processes), and each would otherwise
# compile the project and re-rewrite the tests' asserts anew. __pycache__ is git-ignored.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

ROOT = Path(__file__).resolve().parent.parent
LIVE_STACK = ROOT / "tests" / "integration_tests"
# The tests that run vLLM: the live stack's, and the container test that starts the GPU
# class's own engine. Two CPU engines at once contend for the cores (vLLM's CPU threads
# spin-wait), slowing both several times over: these all run on one worker, in file order.
ENGINE_TESTS = (LIVE_STACK, ROOT / "tests" / "container_fidelity" / "test_containers.py")
ENGINE_SCOPE = "vllm"
# Live-stack modules that check answers, not time: they run first, while the offline tests
# keep the other worker (and the machine) busy; the modules that time cold starts, boots
# and deadlines run after, on a quieter machine.
ANSWERS_FIRST = ("test_fuzz.py", "test_standard.py", "test_tool_stream_integrity.py")


def _node_prefixes() -> tuple[str, ...]:
    return tuple(
        path.relative_to(ROOT).as_posix() + ("/" if path.is_dir() else "") for path in ENGINE_TESTS
    )


class EngineTestsScheduling(LoadScopeScheduling):
    """Every test that runs vLLM in one scope; every other module a scope of its own. (xdist's
    own ``loadgroup`` would do the first part, but it renames node ids in a way pytest 9.2
    no longer takes: its groups are silently ignored.)"""

    PREFIXES = _node_prefixes()

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return ENGINE_SCOPE if module.startswith(self.PREFIXES) else module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort: within a module, and among the other modules, the order stays the file's.
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        if item.path.parent == LIVE_STACK and name in ANSWERS_FIRST:
            return ANSWERS_FIRST.index(name)
        return len(ANSWERS_FIRST)

    items.sort(key=rank)


def selects_engine_tests(args: list[str]) -> bool:
    """Whether a run of these paths (pytest's ``config.args``) reaches a test that runs vLLM."""
    for arg in args:
        path = Path(arg.split("::")[0]).resolve()
        for engine in ENGINE_TESTS:
            if path == engine or engine in path.parents or path in engine.parents:
                return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    if selects_engine_tests(config.args):
        return EngineTestsScheduling(config, log)
    return WorkStealingScheduling(config, log)
