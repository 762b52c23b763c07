"""LangChain's standard unit tests for chat models (no server)."""

from __future__ import annotations

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_vllm_autoscale import ChatVLLMAutoscale


class TestChatVLLMAutoscaleUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatVLLMAutoscale]:
        return ChatVLLMAutoscale

    @property
    def chat_model_params(self) -> dict:
        return {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "base_url": "http://127.0.0.1:9"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {"VLLM_AUTOSCALE_URL": "http://wrapper.example:8000", "VLLM_AUTOSCALE_API_KEY": "k"},
            {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            {"base_url": "http://wrapper.example:8000", "api_key": "k"},
        )

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "another-model"

    @pytest.mark.xfail(
        reason="langchain-core's load() only revives classes on its own allowlist "
        "(langchain_core.load.mapping), which partner packages outside the langchain repo are "
        "not on; test_serialization_round_trip checks the same with allowed_objects",
        strict=True,
    )
    def test_serdes(self, model, snapshot) -> None:  # type: ignore[override]
        super().test_serdes(model, snapshot)
