"""The gateway's cost at the wrapper, side by side with the wrapper before it.

    python -m benchmarks.gateway_hop [--ref a0a479f] [--n 3000] [--out benchmarks/results]
    python -m benchmarks.gateway_hop --ref REV --ref-gateway   # the gateway at REV vs here

One zero-compute stub upstream and, over it, three wrappers, timed call by call in turn (the
order reversed every other round) so machine noise hits them alike:

- ``ref``: the wrapper at ``--ref`` (before the gateway): one key, no limits, no cache; with
  ``--ref-gateway``, the gateway at ``--ref`` with the same 50 keys, limits, ledger and cache
  as this tree's (a change to the gateway measured side by side with the gateway before it;
  written as ``gateway_hop_vs_ref``);
- ``gateway``: this tree with 50 named keys, the caller's rpm, tpm, stream and monthly
  budget limits on (never reached), the ledger in SQLite, the cache on at its default size
  (1,024 entries, always full after the first rounds); every request is
  deterministic with a new seed, so each one pays the whole cache path and misses (key hash,
  lookup, store);
- ``hit``: this tree, one request over and over: answered from the cache.

Reports each path's latency added over calling the stub directly, the gateway minus the ref
(target: within 0.05 ms at p50), and a hit's latency at the wrapper (client-observed, so an
upper bound; target: p50 <= 1 ms) against a miss's. Writes ``gateway_hop.json`` and
``gateway_hop.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from benchmarks.compare_hop import _serve, _worktree
from benchmarks.run import ROOT, interleave, pct, save

ROUNDS = 5
ADMIN_KEY = "bench-admin-" + "a" * 32
USER_KEYS = [f"bench-user-{i:02d}-" + "u" * 32 for i in range(50)]
TARGETS = {"gateway_minus_ref_p50_ms": ("<=", 0.05), "hit_p50_ms": ("<=", 1.0)}


def _gateway_env(state: Path) -> dict[str, str]:
    keys = [{"name": f"user-{i:02d}", "key": k} for i, k in enumerate(USER_KEYS)]
    return {
        "VLLM_WRAPPER_API_KEY": ADMIN_KEY,
        "VLLM_API_KEYS": json.dumps(keys),
        "VLLM_DEFAULT_RPM": str(10**7),
        "VLLM_DEFAULT_TPM": str(10**9),
        "VLLM_DEFAULT_MAX_STREAMS": "1000",
        "VLLM_DEFAULT_MONTHLY_BUDGET_USD": str(10**6),
        "VLLM_STATE_URL": f"sqlite:///{state}",
    }


def _caller(client: httpx.Client, url: str, key: str | None, body: Callable[[], dict]):
    headers = {"authorization": f"Bearer {key}"} if key else {}

    def call() -> None:
        response = client.post(url + "/v1/chat/completions", json=body(), headers=headers)
        response.raise_for_status()

    return call


def one_round(
    paths: dict[str, str], n: int, seeds: itertools.count, ref_key: str = ADMIN_KEY
) -> dict[str, Any]:
    prompt = [{"role": "user", "content": "Say ok."}]

    def fresh() -> dict[str, Any]:  # deterministic, never seen: a miss
        return {"model": "stub", "messages": prompt, "max_tokens": 1, "temperature": 0,
                "seed": next(seeds)}  # fmt: skip

    def same() -> dict[str, Any]:
        return {"model": "stub", "messages": prompt, "max_tokens": 1, "temperature": 0, "seed": -1}

    with httpx.Client(timeout=60) as client:
        calls = {
            "direct": _caller(client, paths["direct"], None, fresh),
            "ref": _caller(client, paths["ref"], ref_key, fresh),
            "gateway": _caller(client, paths["gateway"], USER_KEYS[-1], fresh),
            "hit": _caller(client, paths["gateway"], USER_KEYS[0], same),
        }
        for _ in range(5):  # warm connections (and the hit's entry)
            for fn in calls.values():
                fn()
        times = interleave(calls, n)
    out: dict[str, Any] = {}
    for name, xs in times.items():
        for q in (50, 99):
            out[f"{name}_p{q}_ms"] = pct(xs, q) * 1000
    for name in ("ref", "gateway", "hit"):
        for q in ("p50", "p99"):
            out[f"{name}_added_{q}_ms"] = out[f"{name}_{q}_ms"] - out[f"direct_{q}_ms"]
    return out


def compare(ref: str, n: int, ref_gateway: bool = False) -> dict[str, Any]:
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        old_tree = stack.enter_context(_worktree(ref))
        stub = _serve(stack, ROOT, env={})
        port = stub.rsplit(":", 1)[1]
        ref_env = (
            _gateway_env(Path(tmp) / "ref-state.db") if ref_gateway
            else {"VLLM_WRAPPER_API_KEY": ADMIN_KEY}
        )  # fmt: skip
        ref_key = USER_KEYS[-1] if ref_gateway else ADMIN_KEY
        paths = {
            "direct": stub,
            "ref": _serve(stack, old_tree, "--wrap", port, env=ref_env),
            "gateway": _serve(
                stack, ROOT, "--wrap", port, env=_gateway_env(Path(tmp) / "state.db")
            ),
        }
        seeds = itertools.count()
        rounds = [one_round(paths, n // ROUNDS, seeds, ref_key) for _ in range(ROUNDS)]
    out: dict[str, Any] = {"ref": ref, "ref_gateway": ref_gateway, "n": n, "rounds": rounds}
    med = lambda key: statistics.median(r[key] for r in rounds)  # noqa: E731
    for q in ("p50", "p99"):
        for name in ("ref", "gateway", "hit"):
            out[f"{name}_added_{q}_ms"] = med(f"{name}_added_{q}_ms")
        diffs = [r[f"gateway_added_{q}_ms"] - r[f"ref_added_{q}_ms"] for r in rounds]
        out[f"gateway_minus_ref_{q}_ms"] = statistics.median(diffs)
        out[f"gateway_minus_ref_{q}_spread_ms"] = max(diffs) - min(diffs)
    out["hit_p50_ms"] = med("hit_p50_ms")
    out["miss_p50_ms"] = med("gateway_p50_ms")
    out["hit_over_miss_p50"] = out["hit_p50_ms"] / out["miss_p50_ms"]
    out["targets"] = {
        key: {"value": round(out[key], 4), "target": f"{op} {limit}",
              "met": out[key] <= limit if op == "<=" else out[key] >= limit}
        for key, (op, limit) in TARGETS.items()
    }  # fmt: skip
    return out


def markdown(r: dict[str, Any]) -> str:
    ref_setup = (
        "the same gateway settings" if r.get("ref_gateway") else "one key, no limits, no cache"
    )
    lines = [
        f"# The gateway's hop: this tree vs `{r['ref']}` ({r['n']} requests per path, "
        f"{ROUNDS} rounds, interleaved; {os.cpu_count()} CPUs)",
        "",
        "| added over the stub | p50 (ms) | p99 (ms) |",
        "| --- | --- | --- |",
        f"| `{r['ref']}` ({ref_setup}) | {r['ref_added_p50_ms']:.3f} | "
        f"{r['ref_added_p99_ms']:.3f} |",
        f"| gateway: 50 keys, limits, ledger, cache miss | {r['gateway_added_p50_ms']:.3f} | "
        f"{r['gateway_added_p99_ms']:.3f} |",
        f"| gateway - `{r['ref']}` (median of rounds; spread) | "
        f"{r['gateway_minus_ref_p50_ms']:+.3f} ({r['gateway_minus_ref_p50_spread_ms']:.3f}) | "
        f"{r['gateway_minus_ref_p99_ms']:+.3f} ({r['gateway_minus_ref_p99_spread_ms']:.3f}) |",
        "",
        "| at the wrapper (client-observed) | p50 (ms) |",
        "| --- | --- |",
        f"| cache hit | {r['hit_p50_ms']:.3f} |",
        f"| cache miss (stub upstream) | {r['miss_p50_ms']:.3f} |",
        f"| hit / miss | {r['hit_over_miss_p50']:.2f} |",
        "",
        "| target | value | met |",
        "| --- | --- | --- |",
    ]
    for key, row in r["targets"].items():
        lines.append(
            f"| {key} {row['target']} | {row['value']} | {'yes' if row['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ref", default="a0a479f", help="the wrapper before the gateway")
    parser.add_argument(
        "--ref-gateway",
        action="store_true",
        help="serve the ref with the same gateway settings as this tree",
    )
    parser.add_argument("--n", type=int, default=3000, help="requests per path, in all")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    result = compare(args.ref, args.n, args.ref_gateway)
    name = "gateway_hop_vs_ref" if args.ref_gateway else "gateway_hop"
    save(args.out, name, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
