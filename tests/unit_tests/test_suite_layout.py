"""The suite's own layout: every live-stack test runs on one xdist worker (one engine), and
nothing else is tied to it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import tomllib

from tests import conftest

TESTS = Path(conftest.__file__).parent


def _scope(nodeid: str) -> str:
    return conftest.LiveStackScheduling._split_scope(None, nodeid)  # type: ignore[arg-type]


def test_live_stack_tests_share_one_scope_and_offline_modules_have_their_own() -> None:
    live = sorted((TESTS / "integration_tests").glob("test_*.py"))
    offline = [
        *sorted((TESTS / "unit_tests").rglob("test_*.py")),
        *sorted((TESTS / "packaging").glob("test_*.py")),
        *sorted((TESTS / "container_fidelity").glob("test_*.py")),
    ]
    assert len(live) > 20 and len(offline) > 50

    def nodeid(path: Path) -> str:
        return f"{path.relative_to(TESTS.parent).as_posix()}::test_x[a::b]"

    own = {p for p in live if nodeid(p).split("::")[0] in conftest.OWN_ENGINE}
    assert len(own) == len(conftest.OWN_ENGINE)  # each names a module that exists
    assert {_scope(nodeid(p)) for p in live if p not in own} == {conftest.LIVE_STACK_PREFIX}
    assert all(_scope(nodeid(p)) == nodeid(p).split("::")[0] for p in own)
    scopes = [_scope(nodeid(p)) for p in offline]
    assert scopes == [nodeid(p).split("::")[0] for p in offline]


def test_a_run_reaches_the_live_stack_through_its_folder_a_file_or_a_parent() -> None:
    live = "tests/integration_tests"
    assert conftest.selects_live_stack([str(TESTS.parent / "tests")])
    assert conftest.selects_live_stack([str(TESTS.parent / live / "test_fuzz.py") + "::t"])
    assert conftest.selects_live_stack([str(TESTS.parent / live)])
    assert not conftest.selects_live_stack([str(TESTS / "unit_tests")])
    assert not conftest.selects_live_stack([str(TESTS / "packaging"), str(TESTS / "unit_tests")])


def test_the_suite_runs_on_workers_with_named_plugins() -> None:
    options = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["tool"]["pytest"]
    addopts = options["ini_options"]["addopts"]
    assert "--disable-plugin-autoload" in addopts
    assert addopts[addopts.index("--dist") + 1] != "no"
    assert "xdist.plugin" in addopts


def test_live_stack_tests_land_on_one_worker() -> None:
    """Four live-stack tests that need no engine, run by a real pytest with its workers:
    they all run on the same one."""
    nodes = [
        "tests/integration_tests/test_cli.py::test_deploy_dry_run_names_the_setup",
        "tests/integration_tests/test_examples.py::test_every_example_is_covered",
        "tests/integration_tests/test_tool_stream_integrity.py::test_case_list_covers_the_shapes",
        "tests/integration_tests/test_readme_langchain.py::test_sections_have_code",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-n", "2", *nodes],
        cwd=TESTS.parent, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    workers = re.findall(r"^\[(gw\d+)\] .* PASSED tests/integration_tests/", run.stdout, re.M)
    assert len(workers) == len(nodes) and len(set(workers)) == 1, run.stdout[-3000:]


def test_modules_that_check_answers_run_first_and_each_keeps_its_order() -> None:
    names = ["test_a.py", *reversed(conftest.ANSWERS_FIRST), "test_b.py"]
    items = [SimpleNamespace(path=TESTS / "integration_tests" / n, i=i) for i, n in
             enumerate(names)]  # fmt: skip
    conftest.pytest_collection_modifyitems(items)  # type: ignore[arg-type]
    assert [i.path.name for i in items] == [*conftest.ANSWERS_FIRST, "test_a.py", "test_b.py"]
    assert all((TESTS / "integration_tests" / n).exists() for n in conftest.ANSWERS_FIRST)
