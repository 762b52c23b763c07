"""Shared test settings. Integration tests get the live local stack from
``tests/integration_tests/conftest.py``; unit tests run with the network disabled.

The suite runs on pytest-xdist workers (``addopts`` in pyproject.toml), scheduled here:
- a run with live-stack tests (``tests/integration_tests``): all of them are one unit of work,
  so one worker runs them, in file order, over the session's one engine; the offline tests
  (unit, packaging, container fidelity) go to the other worker(s) module by module meanwhile;
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
LIVE_STACK_PREFIX = "tests/integration_tests/"  # their node ids, relative to the root
# Integration modules that start an engine of their own and never use the session's: they
# run on another worker, beside the live-stack tests.
OWN_ENGINE = frozenset({"tests/integration_tests/test_lora_engine.py"})
# Live-stack modules that check answers, not time: they run first, while the offline tests
# keep the other worker (and the machine) busy; the modules that time cold starts, boots
# and deadlines run after, on a quieter machine.
ANSWERS_FIRST = ("test_fuzz.py", "test_standard.py", "test_tool_stream_integrity.py")


class LiveStackScheduling(LoadScopeScheduling):
    """Every live-stack test in one scope; every other module a scope of its own. (xdist's
    own ``loadgroup`` would do the first part, but it renames node ids in a way pytest 9.2
    no longer takes: its groups are silently ignored.)"""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        if module.startswith(LIVE_STACK_PREFIX) and module not in OWN_ENGINE:
            return LIVE_STACK_PREFIX
        return module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort: within a module, and among the other modules, the order stays the file's.
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return ANSWERS_FIRST.index(name) if name in ANSWERS_FIRST else len(ANSWERS_FIRST)

    items.sort(key=rank)


def selects_live_stack(args: list[str]) -> bool:
    """Whether a run of these paths (pytest's ``config.args``) reaches live-stack tests."""
    for arg in args:
        path = Path(arg.split("::")[0]).resolve()
        if path == LIVE_STACK or LIVE_STACK in path.parents or path in LIVE_STACK.parents:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    if selects_live_stack(config.args):
        return LiveStackScheduling(config, log)
    return WorkStealingScheduling(config, log)
