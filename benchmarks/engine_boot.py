"""The local CPU engine with its model in a worker process of its own (vLLM's default) against
the model in the engine-core process (``EngineConfig.in_process_worker``), side by side.

    python -m benchmarks.engine_boot [--rounds 3] [--out benchmarks/results]

Each round boots both engines one after the other (order swapped every round) and times, for
each: the boot (start to a healthy /health), one 64-token answer alone, and 4 concurrent
64-token answers. Temperature 0: the answers must be equal too. Writes ``engine_boot.json``
and ``engine_boot.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.run import ROOT, save
from deploy.engine.local_model import local_engine_config
from deploy.engine.process import EngineConfig, VLLMEngine

VARIANTS = ("worker process", "in-process worker")
TOKENS = 64
BODY = {"messages": [{"role": "user", "content": "Write a short story about a lighthouse."}],
        "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True}  # fmt: skip


async def one(config: EngineConfig) -> dict[str, Any]:
    engine = VLLMEngine(config)
    began = time.monotonic()
    await engine.start()
    boot = time.monotonic() - began
    body = {**BODY, "model": config.served_model_name}
    try:
        await engine.chat({**body, "max_tokens": 4})  # first-request warm-up, not timed
        began = time.monotonic()
        alone = await engine.chat(body)
        single = time.monotonic() - began
        began = time.monotonic()
        four = await asyncio.gather(*(engine.chat(body) for _ in range(4)))
        concurrent = time.monotonic() - began
    finally:
        engine.stop()
        await engine.aclose()
    return {
        "boot_s": boot,
        "single_tok_s": alone["usage"]["completion_tokens"] / single,
        "concurrent_tok_s": sum(a["usage"]["completion_tokens"] for a in four) / concurrent,
        "text": alone["choices"][0]["message"]["content"],
    }


def compare(rounds: int) -> dict[str, Any]:
    log = str(Path(tempfile.gettempdir()) / "vllm-autoscale-engine-boot-bench.log")
    base = dataclasses.replace(local_engine_config(log_file=log), in_process_worker=False)
    configs = {VARIANTS[0]: base, VARIANTS[1]: dataclasses.replace(base, in_process_worker=True)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for i in range(rounds):
        for name in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
            runs[name].append(asyncio.run(one(configs[name])))
    summary: dict[str, Any] = {}
    for name, results in runs.items():
        summary[name] = {
            key: statistics.median(r[key] for r in results)
            for key in ("boot_s", "single_tok_s", "concurrent_tok_s")
        }
        summary[name]["boots_s"] = [round(r["boot_s"], 1) for r in results]
    base_s, inproc = summary[VARIANTS[0]], summary[VARIANTS[1]]
    texts = {r["text"] for results in runs.values() for r in results}
    return {
        "rounds": rounds,
        "variants": summary,
        "boot_saved_s": base_s["boot_s"] - inproc["boot_s"],
        "boot_ratio": inproc["boot_s"] / base_s["boot_s"],
        "single_ratio": inproc["single_tok_s"] / base_s["single_tok_s"],
        "concurrent_ratio": inproc["concurrent_tok_s"] / base_s["concurrent_tok_s"],
        "same_answers": len(texts) == 1,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        "# Local CPU engine: worker process vs in-process worker",
        "",
        f"{result['rounds']} rounds, boots alternating; medians. Answers equal at temperature "
        f"0: {'yes' if result['same_answers'] else 'NO'}.",
        "",
        "| | boot (s) | boots (s) | 1 request (tok/s) | 4 concurrent (tok/s) |",
        "|---|---:|---|---:|---:|",
    ]
    for name, v in result["variants"].items():
        lines.append(
            f"| {name} | {v['boot_s']:.1f} | {', '.join(map(str, v['boots_s']))} | "
            f"{v['single_tok_s']:.1f} | {v['concurrent_tok_s']:.1f} |"
        )
    lines += [
        "",
        f"In-process worker: boot {result['boot_saved_s']:.1f} s shorter "
        f"(ratio {result['boot_ratio']:.2f}); generation ratio "
        f"{result['single_ratio']:.2f} alone, {result['concurrent_ratio']:.2f} at 4.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    result = compare(args.rounds)
    save(args.out, "engine_boot", result, report(result))


if __name__ == "__main__":
    main()
