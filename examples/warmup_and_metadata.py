"""Warm the GPU before a burst, then read each response's cold-start, timing and cost facts.

    vllm-autoscale serve --local -- python examples/warmup_and_metadata.py

On Modal, `warmup()` starts a GPU container while you do other work (loading data, building
prompts), so the burst does not wait 1-2 minutes for a cold start.
"""

import time

from langchain_vllm_autoscale import ChatVLLMAutoscale

llm = ChatVLLMAutoscale(temperature=0, max_tokens=16)

if __name__ == "__main__":
    print("engine before:", llm.service_status()["state"])
    status = llm.warmup()  # returns at once
    print("warmup requested; engine now:", status["state"])
    deadline = time.monotonic() + 600
    while llm.service_status()["state"] != "warm" and time.monotonic() < deadline:
        time.sleep(1)
    print("engine:", llm.service_status()["state"])

    for answer in llm.batch(["Say one.", "Say two.", "Say three."]):
        service = answer.response_metadata["service"]
        cost = service["cost"]
        print(
            f"{answer.text.strip()[:20]!r:24} cold start: {service['cold_start']}, "
            f"queue {service['queue_wait_ms']} ms, engine {service['engine_ms']} ms, "
            f"GPU cost ${cost['usd']:.6f}"
        )
    status = llm.service_status()
    print(f"cold starts so far: {status['cold_starts']}, window: {status['scaledown_window']} s")
