"""``VLLMAutoscaleEmbeddings`` without a server: LangChain's standard unit suite, batching by
count and by size, vectors kept in order, and the chat model's retries and errors."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from langchain_tests.unit_tests import EmbeddingsUnitTests

from langchain_vllm_autoscale import NotFoundError, VLLMAutoscaleEmbeddings


class TestVLLMAutoscaleEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[VLLMAutoscaleEmbeddings]:
        return VLLMAutoscaleEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "all-minilm-l6-v2", "base_url": "http://127.0.0.1:9"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {"VLLM_AUTOSCALE_URL": "http://wrapper.example:8000", "VLLM_AUTOSCALE_API_KEY": "k"},
            {},
            {"base_url": "http://wrapper.example:8000"},
        )


class Recorder:
    """A fake wrapper: answers each ``/v1/embeddings`` body with one vector per input
    (its length, its position), listed in reverse as a server may; ``fail_first`` answers
    the first request 503 with ``Retry-After: 0``."""

    def __init__(self, fail_first: bool = False) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = fail_first

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/embeddings"
        assert request.headers["authorization"] == "Bearer k"
        if self.fail_first:
            self.fail_first = False
            return httpx.Response(503, headers={"retry-after": "0"},
                                  json={"error": {"message": "cold", "type": "x"}})  # fmt: skip
        body = json.loads(request.content)
        self.bodies.append(body)
        data = [{"index": i, "embedding": [float(len(t)), float(i)]}
                for i, t in enumerate(body["input"])]  # fmt: skip
        return httpx.Response(200, json={"object": "list", "data": data[::-1]})


def embeddings_over(fake: Recorder, **params: Any) -> VLLMAutoscaleEmbeddings:
    return VLLMAutoscaleEmbeddings(
        base_url="http://wrapper.test/v1", api_key="k", http_transport=httpx.MockTransport(fake),
        http_async_transport=httpx.MockTransport(fake), **params,
    )  # fmt: skip


def test_documents_go_in_batches_by_count_and_size_and_come_back_in_order() -> None:
    fake = Recorder()
    texts = ["a", "bb", "ccc", "d" * 10, "e"]
    vectors = embeddings_over(fake, chunk_size=2, max_batch_chars=11).embed_documents(texts)
    assert [v[0] for v in vectors] == [1.0, 2.0, 3.0, 10.0, 1.0]
    assert [b["input"] for b in fake.bodies] == [["a", "bb"], ["ccc"], ["d" * 10, "e"]]
    assert {b["model"] for b in fake.bodies} == {"all-minilm-l6-v2"}


async def test_async_batches_come_back_in_order_and_a_query_is_one_vector() -> None:
    fake = Recorder()
    model = embeddings_over(fake, chunk_size=1, dimensions=2)
    assert [v[0] for v in await model.aembed_documents(["x", "yy", "zzz"])] == [1.0, 2.0, 3.0]
    assert await model.aembed_query("four") == [4.0, 0.0]
    assert all(b["dimensions"] == 2 for b in fake.bodies)


def test_a_cold_engine_is_retried_like_the_chat_model_does() -> None:
    fake = Recorder(fail_first=True)
    assert embeddings_over(fake).embed_query("abc") == [3.0, 0.0]


def test_the_services_errors_are_the_packages_exceptions() -> None:
    def unknown(_: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "model 'x' is not served here",
                                                   "type": "invalid_request_error",
                                                   "param": "model", "code": 404}})  # fmt: skip

    model = VLLMAutoscaleEmbeddings(
        base_url="http://w.test", http_transport=httpx.MockTransport(unknown)
    )
    with pytest.raises(NotFoundError, match="not served here"):
        model.embed_query("x")
