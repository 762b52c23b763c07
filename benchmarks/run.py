"""Benchmarks: the wrapper's cost over direct vLLM, and the client's over ChatOpenAI.

    python -m benchmarks.run [--quick] [--out benchmarks/results]

Starts the local stack (real vLLM on CPU behind the wrapper), a zero-compute stub upstream and
a wrapper over that stub, each in its own process, then measures side by side, alternating
the two paths of each comparison so that machine noise hits both alike. Reports ratios and
differences, never absolute speeds alone. Writes results.json, results.md and results.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from deploy.engine.process import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPT = [{"role": "user", "content": "Say ok."}]

TARGETS = {
    "hop_added_p50_ms": ("<=", 0.5),
    "hop_added_p99_ms": ("<=", 1.5),
    "ttft_ratio": ("<=", 1.05),
    "throughput_ratio": (">=", 0.95),
    "client_ratio": ("<=", 1.0),
    "batch_speedup": (">=", 3.0),
}


@dataclass
class Sizes:
    hop: int = 300
    stub_hop: int = 2000
    stream_rounds: int = 3
    stream_tokens: int = 64
    concurrency: tuple[int, ...] = (1, 4, 16)
    client: int = 100
    batch: int = 16
    batch_tokens: int = 32
    ttft_samples: int = 24


QUICK = Sizes(hop=20, stub_hop=100, stream_rounds=1, stream_tokens=8, concurrency=(1, 4),
              client=10, batch=4, batch_tokens=4, ttft_samples=2)  # fmt: skip


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def interleave(calls: dict[str, Callable[[], Any]], n: int) -> dict[str, list[float]]:
    """Time each call n times, interleaved (order reversed every other round); seconds."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls.items())
    for i in range(n):
        for name, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def bench_hop(
    paths: dict[str, str], headers: dict[str, str], n: int, model: str = MODEL
) -> dict[str, float]:
    """One non-streamed request, max_tokens=1, to ``paths["direct"]`` and to each other path:
    the latency each hop adds."""
    body = {"model": model, "messages": PROMPT, "max_tokens": 1, "temperature": 0}
    with httpx.Client(timeout=60) as client:

        def call(url: str) -> Callable[[], None]:
            def go() -> None:
                client.post(
                    url + "/v1/chat/completions", json=body, headers=headers
                ).raise_for_status()

            return go

        calls = {name: call(url) for name, url in paths.items()}
        for _ in range(5):  # warm connections and caches
            for fn in calls.values():
                fn()
        times = interleave(calls, n)
    ms = lambda xs, q: pct(xs, q) * 1000  # noqa: E731
    out: dict[str, float] = {"n": n}
    for name, xs in times.items():
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = ms(xs, 50), ms(xs, 99)
    for name in paths:
        if name != "direct":
            for q in ("p50", "p99"):
                out[f"{name}_added_{q}_ms"] = out[f"{name}_{q}_ms"] - out[f"direct_{q}_ms"]
    return out


async def _streams(
    url: str, headers: dict[str, str], concurrency: int, tokens: int
) -> dict[str, Any]:
    body = {
        "model": MODEL, "messages": PROMPT, "max_tokens": tokens, "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip

    async def one(client: httpx.AsyncClient) -> tuple[float, int]:
        start = time.perf_counter()
        ttft, produced = None, 0
        async with client.stream(
            "POST", url + "/v1/chat/completions", json=body, headers=headers
        ) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data:") or line.endswith("[DONE]"):
                    continue
                event = json.loads(line[5:])
                if (
                    ttft is None
                    and event.get("choices")
                    and event["choices"][0]["delta"].get("content")
                ):
                    ttft = time.perf_counter() - start
                if event.get("usage"):
                    produced = event["usage"]["completion_tokens"]
        return ttft or 0.0, produced

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    produced = sum(r[1] for r in results)
    return {"ttfts": [r[0] for r in results], "tokens_per_s": produced / wall, "tokens": produced}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_streaming(
    direct: str, wrapper: str, headers: dict[str, str], sizes: Sizes,
    pids: dict[str, int] | None = None,
) -> list[dict[str, float]]:  # fmt: skip
    """TTFT (median over at least ``sizes.ttft_samples`` streams a side, from short streams)
    and aggregate tokens/s (median of ``sizes.stream_rounds`` long rounds), paths alternating.

    With ``pids`` ({"wrapper": pid, "direct": vLLM's API server pid}), also the CPU each of
    those processes spends per streamed token on its own path: a measure the machine's noise
    barely touches."""
    rows = []
    paths = [("direct", direct), ("wrapper", wrapper)]
    for c in sizes.concurrency:
        ttfts: dict[str, list[float]] = {"direct": [], "wrapper": []}
        tput: dict[str, list[float]] = {"direct": [], "wrapper": []}
        cpu = {"direct": 0.0, "wrapper": 0.0}
        tokens_out = {"direct": 0, "wrapper": 0}
        short_rounds = -(-sizes.ttft_samples // c)
        for r in range(short_rounds + sizes.stream_rounds):
            tokens = 2 if r < short_rounds else sizes.stream_tokens
            for name, url in paths if r % 2 == 0 else paths[::-1]:
                before = cpu_seconds(pids[name]) if pids else 0.0
                run = asyncio.run(_streams(url, headers, c, tokens))
                ttfts[name] += run["ttfts"]
                if r >= short_rounds:
                    tput[name].append(run["tokens_per_s"])
                    if pids:
                        cpu[name] += cpu_seconds(pids[name]) - before
                        tokens_out[name] += run["tokens"]
        ttft = {name: statistics.median(v) for name, v in ttfts.items()}
        tps = {name: statistics.median(v) for name, v in tput.items()}
        rows.append({
            "concurrency": c,
            "ttft_samples": len(ttfts["direct"]),
            "direct_ttft_ms": ttft["direct"] * 1000,
            "wrapper_ttft_ms": ttft["wrapper"] * 1000,
            "ttft_ratio": ttft["wrapper"] / ttft["direct"],
            "direct_tokens_per_s": tps["direct"],
            "wrapper_tokens_per_s": tps["wrapper"],
            "throughput_ratio": tps["wrapper"] / tps["direct"],
        })  # fmt: skip
        if pids:
            for name, key in (("wrapper", "wrapper"), ("direct", "vllm_api_server")):
                rows[-1][f"{key}_cpu_us_per_token"] = cpu[name] / tokens_out[name] * 1e6
    return rows


def bench_client(wrapper: str, api_key: str | None, n: int) -> dict[str, float]:
    """ChatVLLMAutoscale.invoke vs ChatOpenAI.invoke against the same wrapper."""
    from langchain_openai import ChatOpenAI

    from langchain_vllm_autoscale import ChatVLLMAutoscale

    ours = ChatVLLMAutoscale(base_url=wrapper, api_key=api_key, max_tokens=1, temperature=0)
    theirs = ChatOpenAI(
        base_url=wrapper + "/v1",
        api_key=api_key or "none",
        model=MODEL,
        max_tokens=1,
        temperature=0,
    )
    for _ in range(3):
        ours.invoke("Say ok.")
        theirs.invoke("Say ok.")
    times = interleave(
        {"ours": lambda: ours.invoke("Say ok."), "theirs": lambda: theirs.invoke("Say ok.")}, n
    )
    a, b = times["ours"], times["theirs"]
    return {
        "n": n,
        "ours_p50_ms": pct(a, 50) * 1000,
        "chatopenai_p50_ms": pct(b, 50) * 1000,
        "client_ratio": pct(a, 50) / pct(b, 50),
    }


def bench_batch(wrapper: str, api_key: str | None, size: int, tokens: int) -> dict[str, float]:
    from langchain_vllm_autoscale import ChatVLLMAutoscale

    llm = ChatVLLMAutoscale(base_url=wrapper, api_key=api_key, max_tokens=tokens, temperature=0)
    prompts = [f"Write a sentence about the number {i}." for i in range(size)]
    llm.invoke(prompts[0])
    start = time.perf_counter()
    llm.batch(prompts)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for p in prompts:
        llm.invoke(p)
    sequential = time.perf_counter() - start
    return {
        "size": size,
        "batch_s": batched,
        "sequential_s": sequential,
        "batch_speedup": sequential / batched,
    }


def run_benchmarks(
    *, engine_url: str, wrapper_url: str, stub_url: str, stub_wrapper_url: str,
    bare_url: str, api_key: str | None, sizes: Sizes, pids: dict[str, int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Every comparison, on servers that are already running."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    results: dict[str, Any] = {"sizes": sizes.__dict__ | {"concurrency": list(sizes.concurrency)}}
    results["hop_vllm"] = bench_hop(
        {"direct": engine_url, "wrapper": wrapper_url}, headers, sizes.hop
    )
    stub_paths = {"direct": stub_url, "wrapper": stub_wrapper_url, "bare": bare_url}
    results["hop_stub"] = bench_hop(stub_paths, {}, sizes.stub_hop, model="stub")
    results["streaming"] = bench_streaming(engine_url, wrapper_url, headers, sizes, pids)
    results["client"] = bench_client(wrapper_url, api_key, sizes.client)
    results["batch"] = bench_batch(wrapper_url, api_key, sizes.batch, sizes.batch_tokens)
    results["summary"] = summarise(results)
    return results


def summarise(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    worst_ttft = max(r["ttft_ratio"] for r in results["streaming"])
    worst_tput = min(r["throughput_ratio"] for r in results["streaming"])
    measured = {
        "hop_added_p50_ms": results["hop_stub"]["wrapper_added_p50_ms"],
        "hop_added_p99_ms": results["hop_stub"]["wrapper_added_p99_ms"],
        "ttft_ratio": worst_ttft,
        "throughput_ratio": worst_tput,
        "client_ratio": results["client"]["client_ratio"],
        "batch_speedup": results["batch"]["batch_speedup"],
    }
    out = {}
    for key, value in measured.items():
        op, target = TARGETS[key]
        met = value <= target if op == "<=" else value >= target
        out[key] = {"value": round(value, 4), "target": f"{op} {target}", "met": met}
    return out


def markdown(results: dict[str, Any]) -> str:
    hop_v, hop_s = results["hop_vllm"], results["hop_stub"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {os.cpu_count()} CPUs; engine: vLLM (CPU) with {MODEL}. Paths alternate call by call.",
        "",
        "| measure | value | target | met |",
        "| --- | --- | --- | --- |",
    ]
    for key, row in results["summary"].items():
        lines.append(
            f"| {key} | {row['value']} | {row['target']} | {'yes' if row['met'] else 'no'} |"
        )
    lines += [
        "",
        "## Wrapper hop (non-streamed, max_tokens=1)",
        "",
        "| upstream | direct p50 ms | wrapper p50 ms | added p50 ms | direct p99 ms | wrapper p99 ms | added p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, h in (("zero-compute stub", hop_s), ("vLLM", hop_v)):
        lines.append(
            f"| {name} | {h['direct_p50_ms']:.2f} | {h['wrapper_p50_ms']:.2f} | {h['wrapper_added_p50_ms']:.2f}"
            f" | {h['direct_p99_ms']:.2f} | {h['wrapper_p99_ms']:.2f} | {h['wrapper_added_p99_ms']:.2f} |"
        )
    lines += [
        "",
        f"Floor on this machine: a bare raw-ASGI + aiohttp forward over the same stub adds "
        f"{hop_s['bare_added_p50_ms']:.2f} ms p50 / {hop_s['bare_added_p99_ms']:.2f} ms p99; "
        f"the wrapper's features cost {hop_s['wrapper_added_p50_ms'] - hop_s['bare_added_p50_ms']:.2f} ms "
        "p50 over it.",
    ]
    lines += [
        "",
        "## Streaming (wrapper vs direct vLLM)",
        "",
        "| streams | TTFT samples a side | direct TTFT ms | wrapper TTFT ms | TTFT ratio | direct tok/s | wrapper tok/s | throughput ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["streaming"]:
        lines.append(
            f"| {r['concurrency']} | {r['ttft_samples']} | {r['direct_ttft_ms']:.1f} | {r['wrapper_ttft_ms']:.1f} | {r['ttft_ratio']:.3f}"
            f" | {r['direct_tokens_per_s']:.1f} | {r['wrapper_tokens_per_s']:.1f} | {r['throughput_ratio']:.3f} |"
        )
    cpu_rows = [r for r in results["streaming"] if "wrapper_cpu_us_per_token" in r]
    if cpu_rows:
        lines += ["", "CPU per streamed token (µs), each process on its own path: " + "; ".join(
            f"{r['concurrency']} streams: wrapper {r['wrapper_cpu_us_per_token']:.0f}, "
            f"vLLM's API server {r['vllm_api_server_cpu_us_per_token']:.0f}" for r in cpu_rows
        ) + "."]  # fmt: skip
    c, b = results["client"], results["batch"]
    lines += [
        "",
        "## Client and batch",
        "",
        f"- `ChatVLLMAutoscale.invoke` p50 {c['ours_p50_ms']:.2f} ms vs `ChatOpenAI.invoke` p50 "
        f"{c['chatopenai_p50_ms']:.2f} ms (same wrapper): ratio {c['client_ratio']:.3f}",
        f"- `batch` of {b['size']}: {b['batch_s']:.2f} s vs {b['size']} sequential `invoke`s: "
        f"{b['sequential_s']:.2f} s: {b['batch_speedup']:.2f}x",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    hop = results["hop_stub"]
    axes[0].bar(["direct p50", "wrapper p50", "direct p99", "wrapper p99"],
                [hop["direct_p50_ms"], hop["wrapper_p50_ms"], hop["direct_p99_ms"], hop["wrapper_p99_ms"]],
                color=["#888", "#36c", "#888", "#36c"])  # fmt: skip
    axes[0].set_title("Hop over a zero-compute upstream (ms)")
    conc = [r["concurrency"] for r in results["streaming"]]
    axes[1].plot(
        conc, [r["ttft_ratio"] for r in results["streaming"]], marker="o", label="TTFT ratio"
    )
    axes[1].plot(
        conc,
        [r["throughput_ratio"] for r in results["streaming"]],
        marker="s",
        label="throughput ratio",
    )
    axes[1].axhline(1.0, color="#999", linewidth=0.8)
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("concurrent streams")
    axes[1].set_title("Wrapper / direct vLLM")
    axes[1].legend()
    summary = results["summary"]
    axes[2].bar(["client ratio", "batch speedup"],
                [summary["client_ratio"]["value"], summary["batch_speedup"]["value"]], color=["#36c", "#3a3"])  # fmt: skip
    axes[2].set_title("Client vs ChatOpenAI; batch vs sequential")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "results.png")


def save(out: str | Path, stem: str, result: dict[str, Any], text: str) -> None:
    """A side-by-side benchmark's results: ``stem.json`` and ``stem.md`` in ``out``, and
    the markdown on stdout."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / f"{stem}.md").write_text(text)
    print(text)


def _wait(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not come up")


# These comparisons time the engine path: their identical temperature-0 requests would
# otherwise be replayed from the response cache (benchmarks/gateway_hop.py times the cache),
# and the ledger stays in memory.
ENGINE_PATH_ENV = {"VLLM_CACHE_MAX_ENTRIES": "0", "VLLM_STATE_URL": "memory://"}


@contextmanager
def _process(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, start_new_session=True,
        env={**os.environ, **ENGINE_PATH_ENV},
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    wrapper_port, stub_port, stub_wrapper_port, bare_port = (free_port() for _ in range(4))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    env_note = "serve --local (engine warm, never scaled down)"
    print(f"starting: {env_note}, stub upstream, wrapper over the stub", flush=True)
    with (
        _process("-m", "deploy.ops.cli", "serve", "--local", "--port", str(wrapper_port), "--warm",
                 "--scaledown-window", "0", "--log-level", "WARNING",
                 "--engine-log", str(Path(args.out) / "engine.log")) as serving,
        _process("-m", "benchmarks.stub_upstream", "--port", str(stub_port)),
        _process("-m", "benchmarks.stub_upstream", "--port", str(stub_wrapper_port), "--wrap", str(stub_port)),
        _process("-m", "benchmarks.stub_upstream", "--port", str(bare_port), "--bare", str(stub_port)),
    ):  # fmt: skip
        wrapper = f"http://127.0.0.1:{wrapper_port}"
        _wait(f"http://127.0.0.1:{stub_port}/health")
        _wait(f"http://127.0.0.1:{stub_wrapper_port}/health")
        _wait(f"http://127.0.0.1:{bare_port}/health")  # the bare forward answers any path
        _wait(wrapper + "/health")
        deadline = time.monotonic() + 600
        while httpx.get(wrapper + "/health").json()["engine_state"] != "warm":
            if time.monotonic() > deadline:
                raise RuntimeError("the engine did not become warm")
            time.sleep(0.5)
        status = httpx.get(wrapper + "/status").json()
        results = run_benchmarks(
            engine_url=status["engine_url"], wrapper_url=wrapper,
            stub_url=f"http://127.0.0.1:{stub_port}",
            stub_wrapper_url=f"http://127.0.0.1:{stub_wrapper_port}",
            bare_url=f"http://127.0.0.1:{bare_port}", api_key=None, sizes=sizes,
            pids={"wrapper": serving.pid, "direct": status["engine_pid"]},
        )  # fmt: skip
    write(results, Path(args.out))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
