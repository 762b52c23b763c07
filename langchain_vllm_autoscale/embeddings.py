"""LangChain embeddings for the same self-hosted service: ``POST /v1/embeddings`` on an
embedding model it serves (its own engine, scaling to zero on its own)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.utils import from_env, secret_from_env
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from langchain_vllm_autoscale._http import ServiceClient

__all__ = ["DEFAULT_EMBEDDING_MODEL", "VLLMAutoscaleEmbeddings"]

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
"""The slash-free alias of the embedding model ``vllm-autoscale serve --local`` serves."""
DEFAULT_URL = "http://127.0.0.1:8000"
EMBEDDINGS_PATH = "/v1/embeddings"


class VLLMAutoscaleEmbeddings(BaseModel, Embeddings):
    """Embeddings from a vLLM Auto-Scale service.

    Texts go in batches (at most ``chunk_size`` texts and ``max_batch_chars`` characters a
    request); the first request may wait for the embedding engine's cold start, hence the
    long read time-out. Errors, retries and time-outs are the chat model's
    (``langchain_vllm_autoscale`` exceptions; 429/502/503/504 retried with ``Retry-After``).

    Example:
        .. code-block:: python

            from langchain_vllm_autoscale import VLLMAutoscaleEmbeddings

            embeddings = VLLMAutoscaleEmbeddings()  # VLLM_AUTOSCALE_URL, VLLM_AUTOSCALE_API_KEY
            vectors = embeddings.embed_documents(["first text", "second text"])
            query = embeddings.embed_query("what is in the first text?")
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    model: str = Field(default=DEFAULT_EMBEDDING_MODEL, alias="model_name")
    """An embedding model the service serves (its name or slash-free alias)."""
    base_url: str = Field(default_factory=from_env("VLLM_AUTOSCALE_URL", default=DEFAULT_URL))
    """The wrapper's URL (env ``VLLM_AUTOSCALE_URL``); with or without ``/v1``."""
    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("VLLM_AUTOSCALE_API_KEY", default=None)
    )
    """Bearer key of the wrapper (env ``VLLM_AUTOSCALE_API_KEY``); None when it has none."""
    dimensions: int | None = None
    """Truncate each vector to this many dimensions (models that support it)."""
    chunk_size: int = Field(default=64, ge=1)
    """Most texts in one request (the service's ``VLLM_MAX_BATCH`` caps it too)."""
    max_batch_chars: int = Field(default=100_000, ge=1)
    """Most characters in one request: long documents go in smaller batches."""
    timeout: float = 180.0
    """Read time-out in seconds; long, because the first call may wait for a cold start."""
    connect_timeout: float = 10.0
    """Connect time-out in seconds; short, so a wrong URL fails fast."""
    max_retries: int = 3
    """Retries for 429/502/503/504 (honouring ``Retry-After``) and failed connections."""
    default_headers: dict[str, str] | None = None
    """Extra headers on every request."""
    http_transport: Any = Field(default=None, exclude=True)
    """An ``httpx.BaseTransport`` for the sync client (tests, proxies)."""
    http_async_transport: Any = Field(default=None, exclude=True)
    """An ``httpx.AsyncBaseTransport`` for the async clients."""

    _client: ServiceClient = PrivateAttr()

    @model_validator(mode="after")
    def _build_client(self) -> VLLMAutoscaleEmbeddings:
        self._client = ServiceClient.for_model(self)
        return self

    def _batches(self, texts: list[str]) -> Iterator[list[str]]:
        """``texts`` in order, in requests of at most ``chunk_size`` texts and
        ``max_batch_chars`` characters (a longer text goes alone)."""
        batch: list[str] = []
        size = 0
        for text in texts:
            if batch and (len(batch) >= self.chunk_size or size + len(text) > self.max_batch_chars):
                yield batch
                batch, size = [], 0
            batch.append(text)
            size += len(text)
        if batch:
            yield batch

    def _body(self, batch: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "input": batch, "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return body

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        vectors: list[list[float]] = []
        for batch in self._batches(texts):
            vectors += _vectors(self._client.request("POST", EMBEDDINGS_PATH, self._body(batch)))
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order; the batches are sent concurrently."""
        answers = await asyncio.gather(
            *(self._client.arequest("POST", EMBEDDINGS_PATH, self._body(b))
              for b in self._batches(texts))
        )  # fmt: skip
        return [vector for answer in answers for vector in _vectors(answer)]

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]


def _vectors(answer: dict[str, Any]) -> list[list[float]]:
    """The vectors of an OpenAI embeddings answer, in their inputs' order."""
    data = sorted(answer["data"], key=lambda item: item["index"])
    return [[float(x) for x in item["embedding"]] for item in data]
