"""LangChain's standard integration suite for ``VLLMAutoscaleEmbeddings``, against the live
wrapper that serves all-MiniLM-L6-v2 beside the chat model."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from langchain_vllm_autoscale import VLLMAutoscaleEmbeddings


class TestVLLMAutoscaleEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @pytest.fixture(autouse=True)
    def _service(self, embedding_url: str, api_key: str, monkeypatch) -> None:
        # The suite builds the model from `embedding_model_params` alone: the service's URL and
        # key come from the environment, as they would for a user.
        monkeypatch.setenv("VLLM_AUTOSCALE_URL", embedding_url)
        monkeypatch.setenv("VLLM_AUTOSCALE_API_KEY", api_key)

    @property
    def embeddings_class(self) -> type[VLLMAutoscaleEmbeddings]:
        return VLLMAutoscaleEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "all-minilm-l6-v2", "timeout": 600}
