"""``/v1/embeddings`` and ``/v1/completions`` against real vLLM (CPU): all-MiniLM-L6-v2 served
beside the chat model, its engine started by the first request that needs it."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from deploy.engine.local_embedding import LOCAL_EMBEDDING_MODEL

pytestmark = pytest.mark.timeout(600)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_real_embeddings_rank_meaning_under_the_slash_free_alias(embedding_url, api_key) -> None:
    client = openai.OpenAI(base_url=f"{embedding_url}/v1", api_key=api_key, timeout=600)
    texts = ["a river flows to the sea", "water runs downhill into the ocean",
             "the stock market fell"]  # fmt: skip
    answer = client.embeddings.create(model="all-minilm-l6-v2", input=texts)
    vectors = [d.embedding for d in answer.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert answer.model == LOCAL_EMBEDDING_MODEL  # the engine got the served name
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    assert answer.usage.prompt_tokens > 0


def test_the_model_list_says_what_each_model_does(embedding_url, api_key) -> None:
    cards = httpx.get(f"{embedding_url}/v1/models", headers={"authorization": f"Bearer {api_key}"})
    by_id = {c["id"]: c for c in cards.json()["data"]}
    assert by_id[LOCAL_EMBEDDING_MODEL]["capabilities"]["task"] == "embedding"
    assert by_id[LOCAL_EMBEDDING_MODEL]["aliases"] == ["all-minilm-l6-v2"]
    chat = next(c for c in by_id.values() if c["capabilities"]["task"] == "generation")
    assert chat["aliases"] == ["smollm2-135m-instruct"]


def test_legacy_completions_plain_and_streamed(warm_stack, api_key) -> None:
    client = openai.OpenAI(base_url=f"{warm_stack.url}/v1", api_key=api_key, timeout=120)
    ask = {"model": "smollm2-135m-instruct", "prompt": "The capital of France is",
           "max_tokens": 8, "temperature": 0}  # fmt: skip
    plain = client.completions.create(**ask)
    assert plain.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert plain.choices[0].text.strip() and plain.usage.completion_tokens > 0
    streamed = client.completions.create(**ask, stream=True)
    pieces = [c.choices[0].text for c in streamed if c.choices]
    assert "".join(pieces) == plain.choices[0].text


def test_litellm_s_embedding_call(embedding_url, api_key) -> None:
    import litellm

    answer = litellm.embedding(model="openai/all-minilm-l6-v2", api_base=f"{embedding_url}/v1",
                               api_key=api_key, input=["a cat", "a dog"])  # fmt: skip
    vectors = [item["embedding"] for item in answer.data]
    assert len(vectors) == 2 and len(vectors[0]) == 384
