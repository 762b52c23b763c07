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

    @pytest.mark.xfail(
        reason="SmolLM2-135M fills the free-text `description` argument until max_tokens runs "
        "out, so the forced call never closes; unicode tool arguments are covered by "
        "test_unicode_tool_arguments in test_chat_model_features.py"
    )
    def test_unicode_tool_call_integration(self, model, **kwargs) -> None:  # type: ignore[override]
        super().test_unicode_tool_call_integration(model, **kwargs)

    @pytest.mark.xfail(
        reason="SmolLM2-135M never chooses a tool under tool_choice='auto' (it answers in "
        "text), so the test stops at its first assertion, before any history goes back; the "
        "same loop with the first choice forced passes in v0 and v1, invoke and stream, in "
        "test_tool_loop_versions.py::test_tool_loop"
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model) -> None:  # type: ignore[override]
        super().test_agent_loop(model)

    @pytest.mark.xfail(
        reason="json_mode only constrains the reply to some JSON object; SmolLM2-135M does not "
        "follow the shape the prompt describes; the library path works with the shape "
        "enforced: method='json_schema' passes in this suite's test_structured_output"
    )
    def test_json_mode(self, model) -> None:  # type: ignore[override]
        super().test_json_mode(model)
