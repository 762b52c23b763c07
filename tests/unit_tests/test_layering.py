"""The tiers stay apart, as a few prefix rules over what each entry point really imports
(``sys.modules`` after importing it, in a fresh interpreter), plus a static check that no
import cycle hides among the project's modules:

- ``deploy.core`` imports nothing of the project outside ``deploy.core``;
- the wrapper (and the transports it uses on Modal) never imports the engine, the cloud
  manifest or the operator tools, nor vLLM, aiohttp, torch or transformers;
- the GPU side never imports the wrapper, the gateway or the Modal transport;
- nothing that runs in a container imports ``deploy.ops``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
HEAVY = ("aiohttp", "vllm", "torch", "transformers")


def _spawn(modules: tuple[str, ...]) -> subprocess.Popen[str]:
    code = f"import sys, json; import {', '.join(modules)}; print(json.dumps(sorted(sys.modules)))"
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


_STARTED: dict[tuple[str, ...], subprocess.Popen[str]] = {}
"""Interpreters started ahead by ``_import_all_at_once``, by the modules they import."""
_LOADED: dict[tuple[str, ...], set[str]] = {}


def _imported(*modules: str) -> set[str]:
    """What importing ``modules`` loads, in a fresh interpreter (one per set of modules)."""
    if modules not in _LOADED:
        process = _STARTED.pop(modules, None) or _spawn(modules)
        out, err = process.communicate()
        if process.returncode:
            raise subprocess.CalledProcessError(process.returncode, process.args, out, err)
        _LOADED[modules] = set(json.loads(out))
    return _LOADED[modules]


def _ours(loaded: set[str], *prefixes: str) -> set[str]:
    return {m for m in loaded if m.startswith(prefixes)}


CORE = tuple(sorted(f"deploy.core.{p.stem}" for p in (DEPLOY / "core").glob("[!_]*.py")))
WRAPPER_SIDE = ("deploy.wrapper", "deploy.transports.modal", "deploy.transports.fallback",
                "deploy.settings")  # fmt: skip
IN_CONTAINERS = ["deploy.wrapper", "deploy.engine.server", "deploy.transports.local",
                 "deploy.transports.modal"]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _import_all_at_once() -> Iterator[None]:
    # Each check imports in a fresh interpreter of its own (two checks of the same modules
    # share one); started together, they share the machine's cores instead of running one
    # after the other.
    for modules in {CORE, WRAPPER_SIDE, *((entry,) for entry in IN_CONTAINERS)}:
        _STARTED[modules] = _spawn(modules)
    yield
    for process in _STARTED.values():  # a test left out (-k): nothing keeps running
        process.kill()
        process.communicate()
    _STARTED.clear()
    _LOADED.clear()


def test_core_imports_nothing_of_the_project_outside_core() -> None:
    loaded = _imported(*CORE)
    outside = {m for m in _ours(loaded, "deploy.") if not m.startswith("deploy.core")}
    assert not outside, sorted(outside)


def test_the_wrapper_never_imports_the_engine_cloud_or_ops() -> None:
    loaded = _imported(*WRAPPER_SIDE)
    assert "deploy.wrapper.app" in loaded  # the check sees the wrapper's own modules
    banned = _ours(loaded, "deploy.engine", "deploy.cloud", "deploy.ops", "deploy.transports.local")
    heavy = {m for m in loaded if m.split(".")[0] in HEAVY}
    assert not banned and not heavy, sorted(banned | heavy)


def test_the_gpu_side_never_imports_the_wrapper() -> None:
    loaded = _imported("deploy.engine.server")
    banned = _ours(loaded, "deploy.wrapper", "deploy.gateway", "deploy.transports.modal",
                   "deploy.ops", "deploy.cloud")  # fmt: skip
    assert not banned, sorted(banned)


@pytest.mark.parametrize("entry", IN_CONTAINERS)
def test_nothing_that_runs_in_a_container_imports_ops(entry: str) -> None:
    assert not _ours(_imported(entry), "deploy.ops"), entry


def _module(path: Path) -> str:
    parts = list(path.relative_to(DEPLOY.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in it (top level or in a function)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            targets = [root] + [f"{root}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def test_no_import_cycle_among_the_project_s_modules() -> None:
    paths = {_module(p): p for p in DEPLOY.rglob("*.py") if "chat_templates" not in p.parts}
    graph = {m: _imports(p, set(paths)) - {"deploy"} for m, p in paths.items()}
    # A package's __init__ that re-exports its modules is not a cycle with them.
    graph = {m: {t for t in ts if not (m.startswith(t + ".") or t.startswith(m + "."))}
             for m, ts in graph.items()}  # fmt: skip
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert not cycles, cycles
