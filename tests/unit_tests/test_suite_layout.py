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
    scheduling = conftest.EngineTestsScheduling.__new__(conftest.EngineTestsScheduling)
    return scheduling._split_scope(nodeid)


def _nodeid(path: Path) -> str:
    return f"{path.relative_to(TESTS.parent).as_posix()}::test_x[a::b]"


def test_every_test_that_runs_vllm_shares_one_scope_and_offline_modules_have_their_own() -> None:
    engine = [
        *sorted((TESTS / "integration_tests").glob("test_*.py")),
        TESTS / "container_fidelity" / "test_containers.py",
    ]
    offline = [
        *sorted((TESTS / "unit_tests").rglob("test_*.py")),
        *sorted((TESTS / "packaging").glob("test_*.py")),
        *sorted(set((TESTS / "container_fidelity").glob("test_*.py")) - set(engine)),
    ]
    assert len(engine) > 20 and len(offline) > 50 and all(p.exists() for p in engine)
    assert {_scope(_nodeid(p)) for p in engine} == {conftest.ENGINE_SCOPE}
    assert [_scope(_nodeid(p)) for p in offline] == [_nodeid(p).split("::")[0] for p in offline]


def test_a_run_reaches_the_engine_tests_through_a_folder_a_file_or_a_parent() -> None:
    live = TESTS / "integration_tests"
    assert conftest.selects_engine_tests([str(TESTS)])
    assert conftest.selects_engine_tests([str(live / "test_fuzz.py") + "::t"])
    assert conftest.selects_engine_tests([str(live)])
    assert conftest.selects_engine_tests([str(TESTS / "container_fidelity")])
    assert not conftest.selects_engine_tests([str(TESTS / "unit_tests")])
    assert not conftest.selects_engine_tests(
        [str(TESTS / "packaging"), str(TESTS / "container_fidelity" / "test_presets.py")]
    )


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
    live = TESTS / "integration_tests"
    names = ["test_a.py", *reversed(conftest.ANSWERS_FIRST), "test_b.py"]
    items = [SimpleNamespace(path=live / n) for n in names]
    unit = SimpleNamespace(path=TESTS / "unit_tests" / "client" / "test_standard.py")
    items.insert(0, unit)  # the same name elsewhere keeps its place
    conftest.pytest_collection_modifyitems(items)  # type: ignore[arg-type]
    assert [i.path.name for i in items[: len(conftest.ANSWERS_FIRST)]] == list(
        conftest.ANSWERS_FIRST
    )
    assert items[len(conftest.ANSWERS_FIRST) :] == [unit, items[-2], items[-1]]
    assert [i.path.name for i in items[-2:]] == ["test_a.py", "test_b.py"]
    assert all((live / n).exists() for n in conftest.ANSWERS_FIRST)
