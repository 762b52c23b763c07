"""A short benchmark run on the session's stack produces well-formed results. (Speed targets
are measured by `python -m benchmarks.run`, never asserted in tests.)"""

from __future__ import annotations

import json
import os

from aiohttp import web

from benchmarks.run import QUICK, TARGETS, run_benchmarks, write
from benchmarks.stub_upstream import BareForward, stub_app, stub_wrapper_app
from deploy.engine.process import free_port
from tests.integration_tests.conftest import serve_on_stack


def test_quick_benchmark_writes_well_formed_results(warm_stack, api_key, tmp_path) -> None:
    port = free_port()

    async def start_stub() -> web.AppRunner:
        runner = web.AppRunner(stub_app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = warm_stack.call(start_stub)
    stub_wrapper_asgi, bare_asgi = stub_wrapper_app(port), BareForward(port)
    try:
        with (
            serve_on_stack(warm_stack, stub_wrapper_asgi) as stub_wrapper,
            serve_on_stack(warm_stack, bare_asgi) as bare,
        ):
            results = run_benchmarks(
                engine_url=warm_stack.transport.engine.base_url,
                wrapper_url=warm_stack.url,
                stub_url=f"http://127.0.0.1:{port}",
                stub_wrapper_url=stub_wrapper,
                bare_url=bare,
                api_key=api_key,
                sizes=QUICK,
                # In-process here, so "wrapper" CPU includes the test's client too.
                pids={"wrapper": os.getpid(), "direct": warm_stack.transport.engine.pid},
            )
    finally:
        warm_stack.call(stub_wrapper_asgi.state.transport.engine.aclose)
        warm_stack.call(bare_asgi.aclose)
        warm_stack.call(runner.cleanup)
    write(results, tmp_path)

    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["summary"]) == set(TARGETS)
    for row in saved["summary"].values():
        assert isinstance(row["value"], float) and isinstance(row["met"], bool)
    assert [r["concurrency"] for r in saved["streaming"]] == list(QUICK.concurrency)
    assert all(
        r["wrapper_tokens_per_s"] > 0 and r["direct_ttft_ms"] > 0 for r in saved["streaming"]
    )
    assert all(r["ttft_samples"] >= QUICK.ttft_samples for r in saved["streaming"])
    assert all(r["vllm_api_server_cpu_us_per_token"] > 0 for r in saved["streaming"])
    assert saved["hop_stub"]["n"] == QUICK.stub_hop and saved["batch"]["size"] == QUICK.batch
    assert saved["hop_stub"]["bare_p50_ms"] > 0  # the floor is measured in the same run
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {key} |" in table for key in TARGETS) and "bare raw-ASGI" in table
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_gateway_and_routing_benchmarks_run_and_report_their_targets() -> None:
    """Tiny runs of the side-by-side harnesses: every figure is there and finite."""
    import math

    from benchmarks import gateway_hop, routing_hop

    gateway = gateway_hop.compare("a0a479f", 50)
    assert set(gateway["targets"]) == set(gateway_hop.TARGETS)
    assert all(math.isfinite(row["value"]) for row in gateway["targets"].values())
    assert gateway["hit_p50_ms"] > 0 and gateway["miss_p50_ms"] > 0
    routing = routing_hop.compare(50, 3)
    assert routing["models"] == 3 and math.isfinite(routing["many_minus_one_p50_ms"])
    assert "| 3 models" in routing_hop.markdown(routing)
