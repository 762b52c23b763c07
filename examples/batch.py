"""Batch: many prompts, one request. The wrapper hands them to one GPU container, which serves
them concurrently (vLLM batches them), instead of one call (or one cold GPU) per prompt.

    vllm-autoscale serve --local -- python examples/batch.py
"""

import time

from langchain_vllm_autoscale import ChatVLLMAutoscale

llm = ChatVLLMAutoscale(temperature=0, max_tokens=24)
cities = ["Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Perth", "Quito", "Hanoi"]

if __name__ == "__main__":
    start = time.perf_counter()
    answers = llm.batch([f"In one short sentence, what is {c} known for?" for c in cities])
    elapsed = time.perf_counter() - start
    for city, answer in zip(cities, answers, strict=True):
        print(f"{city:>6}: {answer.text.strip()[:70]}")
    tokens = sum(a.usage_metadata["output_tokens"] for a in answers)
    print(f"{len(cities)} answers, {tokens} tokens in {elapsed:.1f} s (one request)")

    # return_exceptions keeps the good answers when one input fails.
    mixed = llm.batch(["Say hi.", "word " * 5000], return_exceptions=True)
    print("with a bad input:", [type(m).__name__ for m in mixed])
