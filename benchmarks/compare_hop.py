"""The wrapper's hop, this working tree against a git ref, measured side by side.

    python -m benchmarks.compare_hop [--ref HEAD~1] [--n 3000] [--out benchmarks/results]

For a change to the wrapper's request path: one zero-compute stub upstream, a wrapper over it
from this tree, another from ``--ref`` (a temporary git worktree), and the bare raw-ASGI
forward (the floor). Requests alternate between the paths so that machine noise hits all
alike; the result is each wrapper's added latency over the stub, and the difference between
the two with the spread of that difference across rounds (the noise). Writes
``hop_compare.json`` and ``hop_compare.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks.run import ENGINE_PATH_ENV, ROOT, _wait, bench_hop, save
from deploy.engine.process import free_port

ROUNDS = 5


@contextmanager
def _worktree(ref: str):
    with tempfile.TemporaryDirectory(prefix="hop-ref-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), ref],
                       cwd=ROOT, check=True)  # fmt: skip
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT,
                           check=False)  # fmt: skip


def _serve(stack: ExitStack, tree: Path, *args: str, env: dict[str, str] = ENGINE_PATH_ENV) -> str:
    """``benchmarks.stub_upstream`` from ``tree`` (that tree's ``deploy`` first) under
    ``env``; its URL once it answers. By default the hop without the cache."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.stub_upstream", "--port", str(port), *args],
        cwd=tree, env={**os.environ, **env, "PYTHONPATH": str(tree)},
    )  # fmt: skip
    stack.callback(proc.wait, 10)
    stack.callback(proc.terminate)
    url = f"http://127.0.0.1:{port}"
    _wait(url + "/health")
    return url


def compare(ref: str, n: int) -> dict[str, Any]:
    with ExitStack() as stack:
        old_tree = stack.enter_context(_worktree(ref))
        stub = _serve(stack, ROOT)
        stub_port = stub.rsplit(":", 1)[1]
        paths = {
            "direct": stub,
            "tree": _serve(stack, ROOT, "--wrap", stub_port),
            "ref": _serve(stack, old_tree, "--wrap", stub_port),
            "bare": _serve(stack, ROOT, "--bare", stub_port),
        }
        rounds = [bench_hop(paths, {}, n // ROUNDS, model="stub") for _ in range(ROUNDS)]
    out: dict[str, Any] = {"ref": ref, "n": n, "rounds": rounds}
    for q in ("p50", "p99"):
        diffs = [r[f"tree_added_{q}_ms"] - r[f"ref_added_{q}_ms"] for r in rounds]
        for name in ("tree", "ref", "bare"):
            out[f"{name}_added_{q}_ms"] = statistics.median(
                r[f"{name}_added_{q}_ms"] for r in rounds
            )
        out[f"tree_minus_ref_{q}_ms"] = statistics.median(diffs)
        out[f"tree_minus_ref_{q}_spread_ms"] = max(diffs) - min(diffs)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Wrapper hop: this tree vs `{result['ref']}` ({result['n']} requests per path, "
        f"{ROUNDS} rounds, interleaved)",
        "",
        "| added over the stub | p50 (ms) | p99 (ms) |",
        "| --- | --- | --- |",
    ]
    for name, label in (("tree", "this tree"), ("ref", result["ref"]), ("bare", "bare forward")):
        lines.append(
            f"| {label} | {result[f'{name}_added_p50_ms']:.3f} | {result[f'{name}_added_p99_ms']:.3f} |"
        )
    lines.append(
        f"| this tree - {result['ref']} (median of rounds; spread across rounds) | "
        f"{result['tree_minus_ref_p50_ms']:+.3f} ({result['tree_minus_ref_p50_spread_ms']:.3f}) | "
        f"{result['tree_minus_ref_p99_ms']:+.3f} ({result['tree_minus_ref_p99_spread_ms']:.3f}) |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ref", default="HEAD~1", help="the git ref to compare against")
    parser.add_argument("--n", type=int, default=3000, help="requests per path, in all")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    result = compare(args.ref, args.n)
    save(args.out, "hop_compare", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
