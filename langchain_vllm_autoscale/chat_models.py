"""``ChatVLLMAutoscale``: a LangChain chat model for a scale-to-zero vLLM service."""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput, ModelProfile
from langchain_core.language_models.chat_models import (
    BaseChatModel,
    LangSmithParams,
    agenerate_from_stream,
    generate_from_stream,
)
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils import from_env, secret_from_env
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from langchain_vllm_autoscale._exceptions import VLLMAutoscaleError, error_from_response
from langchain_vllm_autoscale._http import ServiceClient
from langchain_vllm_autoscale._messages import (
    PROVIDER,
    StreamState,
    chat_result_from_response,
    dumps_body,
    to_openai_messages,
)
from langchain_vllm_autoscale._notices import anotifier, notifier
from langchain_vllm_autoscale._warmup_core import start_warmup

__all__ = ["ChatVLLMAutoscale"]

DEFAULT_URL = "http://127.0.0.1:8000"
COMPLETIONS_PATH = "/v1/chat/completions"
BATCH_PATH = "/v1/chat/completions/batch"
MODELS_PATH = "/v1/models"
TOKENIZE_PATH = "/tokenize"
PROFILE_TIMEOUT_S = 10.0
"""``/v1/models`` answers from the wrapper's configuration, at once: no cold-start wait."""
PROFILE_RETRY_S = 60.0
"""After a failed profile fetch, reading ``profile`` asks again only after this long."""
TOKENIZE_TIMEOUT_S = 60.0
"""``/tokenize`` never waits on the GPU; its first call loads the tokenizer (seconds)."""

log = logging.getLogger(__name__)

# Results of a batch request, fetched once for all inputs and handed to each input's
# _generate call (which keeps LangChain's per-input callbacks, tracing and caching).
_PREFETCHED: contextvars.ContextVar[dict[str, list[Any]] | None] = contextvars.ContextVar(
    "vllm_autoscale_prefetched", default=None
)

# Keys LangChain passes to _generate that are not request parameters.
_INTERNAL_KWARGS = frozenset({"ls_structured_output_format", "stream"})


class ChatVLLMAutoscale(BaseChatModel):
    """Chat model for a vLLM service that scales to zero (the ``vllm-autoscale`` wrapper).

    It talks to the always-on wrapper over HTTP (OpenAI-compatible
    ``/v1/chat/completions`` plus a batch route). The wrapper wakes the GPU on demand, so the
    first call after an idle period can wait for a cold start: the default ``timeout`` is
    long, streams receive keep-alives meanwhile, and ``warmup()`` wakes the GPU ahead of need
    (also ``auto_warmup="on_init"``, and ``WarmupCallbackHandler`` when an agent's run starts).

    Setup:
        ``pip install langchain-vllm-autoscale``, then point it at a wrapper::

            export VLLM_AUTOSCALE_URL="https://<workspace>--vllm-autoscale-wrapper.modal.run"
            export VLLM_AUTOSCALE_API_KEY="..."   # if the wrapper has one

        ``vllm-autoscale serve --local`` runs the whole service on your machine instead.

    Example:
        .. code-block:: python

            from langchain_vllm_autoscale import ChatVLLMAutoscale

            llm = ChatVLLMAutoscale(temperature=0, max_tokens=256)
            llm.invoke("Name three French cheeses.")
            for chunk in llm.stream("Count to five."):
                print(chunk.text, end="")
            llm.bind_tools([get_weather]).invoke("Weather in Paris?").tool_calls
            llm.with_structured_output(Person).invoke("Ada Lovelace, born 1815")
            llm.batch(["one", "two", "three"])  # one request; the GPU serves them together
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    model: str | None = Field(default=None, alias="model_name")
    """Model name sent to the service; None lets the service use the one it serves."""
    base_url: str = Field(default_factory=from_env("VLLM_AUTOSCALE_URL", default=DEFAULT_URL))
    """The wrapper's URL (env ``VLLM_AUTOSCALE_URL``); a Modal URL or a local one. The root
    (``http://127.0.0.1:8000``) and the openai SDK's form (``http://127.0.0.1:8000/v1``)
    both work."""
    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("VLLM_AUTOSCALE_API_KEY", default=None)
    )
    """Bearer key of the wrapper (env ``VLLM_AUTOSCALE_API_KEY``); None when it has none."""
    temperature: float | None = None
    """Sampling temperature, 0-2."""
    max_tokens: int | None = Field(default=None, alias="max_completion_tokens")
    """Most tokens to generate."""
    top_p: float | None = None
    """Nucleus sampling probability mass."""
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Stop sequences (a per-call ``stop`` replaces these)."""
    seed: int | None = None
    """Seed for reproducible sampling."""
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    """Return token log probabilities in ``response_metadata["logprobs"]``."""
    top_logprobs: int | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Other OpenAI request fields, sent as they are."""
    extra_body: dict[str, Any] | None = None
    """vLLM-only fields (``top_k``, ``repetition_penalty``, ``min_p``, ...), sent as they are."""
    timeout: float = 180.0
    """Read time-out in seconds; long, because the first call may wait for a cold start."""
    connect_timeout: float = 10.0
    """Connect time-out in seconds; short, so a wrong URL fails fast."""
    max_retries: int = 3
    """Retries for 429/502/503/504 (honouring ``Retry-After``) and failed connections."""
    streaming: bool = False
    """Stream internally even for ``invoke``."""
    stream_usage: bool = True
    """Ask for token usage at the end of each stream."""
    default_headers: dict[str, str] | None = None
    """Extra headers on every request."""
    http_transport: Any = Field(default=None, exclude=True)
    """An ``httpx.BaseTransport`` for the sync client (tests, proxies)."""
    http_async_transport: Any = Field(default=None, exclude=True)
    """An ``httpx.AsyncBaseTransport`` for the async clients."""
    auto_warmup: Literal["never", "on_init"] = "never"
    """When the model wakes the GPU by itself, ahead of its first call:

    - ``"never"`` (default): only calls (and ``warmup()``) wake it.
    - ``"on_init"``: when the model object is created, e.g. at an app's start-up, so the
      engine boots while the app gets ready. Fire-and-forget: a daemon thread sends
      ``POST /warmup`` (in sync and async programs alike); creating the model never waits for
      it and never fails because of it (a failure is logged as a warning).

    There is no ``"on_run_start"``: a model cannot see the agent or chain run around it start
    (its own ``callbacks`` hear only its own calls, too late to help). To wake the GPU when a
    run starts, give ``WarmupCallbackHandler.for_model(llm)`` to that run:
    ``agent.invoke(..., config={"callbacks": [handler]})`` or
    ``agent.with_config(callbacks=[handler])``; see ``langchain_vllm_autoscale.warmup``.

    Automatic warm-ups (this one and the handler's) go at most once per 10 s to a service URL
    from a process, however many models and runs ask."""

    _client: ServiceClient = PrivateAttr()

    @model_validator(mode="after")
    def _build_client(self) -> ChatVLLMAutoscale:
        self._client = ServiceClient.for_model(self)
        return self

    _profile_lazy: bool = PrivateAttr(default=False)
    _profile_asked_at: float | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _defer_profile(self) -> ChatVLLMAutoscale:
        # No profile given: the service's is fetched when `profile` is first read (see
        # _ServiceProfile), not here: constructing a model stays offline and instant.
        self._profile_lazy = self.__dict__.get("profile") is None
        return self

    @model_validator(mode="after")
    def _warm_up_on_init(self) -> ChatVLLMAutoscale:
        if self.auto_warmup == "on_init":
            start_warmup(self._client)  # a daemon thread: returns at once, never raises
        return self

    # -- LangChain metadata -----------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return PROVIDER

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_vllm_autoscale", "chat_models"]

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "VLLM_AUTOSCALE_API_KEY"}

    @property
    def _default_params(self) -> dict[str, Any]:
        params = {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "stop": self.stop,
            "seed": self.seed,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs,
        }
        return {k: v for k, v in params.items() if v is not None} | self.model_kwargs

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"base_url": self.base_url, **self._default_params}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = {**self._default_params, **kwargs}
        ls = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=params.get("model") or self.model or "default",
            ls_model_type="chat",
        )
        if params.get("temperature") is not None:
            ls["ls_temperature"] = params["temperature"]
        if params.get("max_tokens") is not None:
            ls["ls_max_tokens"] = params["max_tokens"]
        if stop or params.get("stop"):
            ls["ls_stop"] = stop or params["stop"]
        return ls

    # -- requests ---------------------------------------------------------------------------------

    def _build_body(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, **kwargs: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": to_openai_messages(messages), **self._default_params}
        body.update({k: v for k, v in kwargs.items() if k not in _INTERNAL_KWARGS})
        if stop is not None:
            body["stop"] = stop
        if self.extra_body:
            body.update(self.extra_body)
        return body

    def _stream_body(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, **kwargs: Any
    ) -> dict[str, Any]:
        body = self._build_body(messages, stop, **kwargs)
        body["stream"] = True
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    @staticmethod
    def _take_prefetched(body: dict[str, Any]) -> Any:
        prefetched = _PREFETCHED.get()
        if not prefetched:
            return None
        results = prefetched.get(dumps_body(body))
        return results.pop(0) if results else None

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        body = self._build_body(messages, stop, **kwargs)
        payload = self._take_prefetched(body)
        if payload is None:
            payload = self._client.request(
                "POST", COMPLETIONS_PATH, body, notifier(run_manager, self.callbacks)
            )
        elif isinstance(payload, Exception):
            raise payload
        return chat_result_from_response(payload)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        body = self._build_body(messages, stop, **kwargs)
        payload = self._take_prefetched(body)
        if payload is None:
            payload = await self._client.arequest(
                "POST", COMPLETIONS_PATH, body, anotifier(run_manager, self.callbacks)
            )
        elif isinstance(payload, Exception):
            raise payload
        return chat_result_from_response(payload)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        state = StreamState()
        body = self._stream_body(messages, stop, **kwargs)
        for event in self._client.stream(
            COMPLETIONS_PATH, body, notifier(run_manager, self.callbacks)
        ):
            chunk = state.feed(event)
            if chunk is not None:
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        final = state.final_chunk()
        if run_manager:
            run_manager.on_llm_new_token("", chunk=final)
        yield final

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        state = StreamState()
        body = self._stream_body(messages, stop, **kwargs)
        async for event in self._client.astream(
            COMPLETIONS_PATH, body, anotifier(run_manager, self.callbacks)
        ):
            chunk = state.feed(event)
            if chunk is not None:
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        final = state.final_chunk()
        if run_manager:
            await run_manager.on_llm_new_token("", chunk=final)
        yield final

    # -- batch: one request for many inputs -------------------------------------------------------

    def _batch_bodies(
        self, inputs: Sequence[LanguageModelInput], kwargs: dict[str, Any]
    ) -> list[dict[str, Any]] | None:
        if len(inputs) < 2 or self.streaming:
            return None
        stop = kwargs.get("stop")
        rest = {k: v for k, v in kwargs.items() if k != "stop"}
        return [
            self._build_body(self._convert_input(item).to_messages(), stop, **rest)
            for item in inputs
        ]

    @staticmethod
    def _prefetch_table(
        bodies: list[dict[str, Any]], answer: dict[str, Any]
    ) -> dict[str, list[Any]]:
        table: dict[str, list[Any]] = {}
        results = sorted(answer.get("results") or [], key=itemgetter("index"))
        for body, result in zip(bodies, results, strict=False):
            item: Any
            if "response" in result:
                item = result["response"]
            else:
                item = error_from_response(int(result.get("status_code") or 500), result)
            table.setdefault(dumps_body(body), []).append(item)
        return table

    @staticmethod
    def _max_concurrency(config: RunnableConfig | list[RunnableConfig] | None) -> int | None:
        first = config[0] if isinstance(config, list) and config else config
        return first.get("max_concurrency") if isinstance(first, dict) else None

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:  # type: ignore[override]
        """Like ``Runnable.batch``, but all inputs travel to the service as one request.

        The GPU side then serves them concurrently in one container instead of one call each.
        Callbacks, tracing and ``return_exceptions`` work per input as usual.
        """
        bodies = self._batch_bodies(inputs, kwargs)
        if bodies is None:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        request = {"requests": bodies, "max_concurrency": self._max_concurrency(config)}
        try:
            answer = self._client.request("POST", BATCH_PATH, request)
        except VLLMAutoscaleError:
            if not return_exceptions:
                raise
            answer = {}
        token = _PREFETCHED.set(self._prefetch_table(bodies, answer))
        try:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            _PREFETCHED.reset(token)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:  # type: ignore[override]
        """Async ``batch``: one request to the service for all inputs."""
        bodies = self._batch_bodies(inputs, kwargs)
        if bodies is None:
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        request = {"requests": bodies, "max_concurrency": self._max_concurrency(config)}
        try:
            answer = await self._client.arequest("POST", BATCH_PATH, request)
        except VLLMAutoscaleError:
            if not return_exceptions:
                raise
            answer = {}
        token = _PREFETCHED.set(self._prefetch_table(bodies, answer))
        try:
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        finally:
            _PREFETCHED.reset(token)

    # -- service helpers --------------------------------------------------------------------------

    def warmup(self) -> dict[str, Any]:
        """Ask the service to start the GPU engine now; returns at once with its status."""
        return self._client.request("POST", "/warmup")

    async def awarmup(self) -> dict[str, Any]:
        """Async ``warmup``."""
        return await self._client.arequest("POST", "/warmup")

    def service_status(self) -> dict[str, Any]:
        """The engine's state (cold/starting/warm/failed), queue and cold starts; never wakes it."""
        return self._client.request("GET", "/status")

    # -- profile and token counts: from the service, never from the GPU ---------------------------

    def _profile_due(self) -> bool:
        if not self._profile_lazy:
            return False
        asked = self._profile_asked_at
        return asked is None or time.monotonic() - asked >= PROFILE_RETRY_S

    def _fetch_profile(self) -> ModelProfile | None:
        """The served model's profile from ``GET /v1/models`` (the wrapper answers from its
        configuration: the GPU stays asleep); None when the service cannot say."""
        self._profile_asked_at = time.monotonic()
        try:
            answer = self._client.request_quick("GET", MODELS_PATH, timeout=PROFILE_TIMEOUT_S)
        except Exception as exc:  # a profile is optional: no answer, no profile
            log.debug("no model profile from %s: %r", self.base_url, exc)
            return None
        return _profile_from_models(answer, self.model)

    def _tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.model:
            body["model"] = self.model
        # One attempt, bounded: a service that cannot count raises, it is never guessed at.
        return self._client.request_quick(
            "POST", TOKENIZE_PATH, body, timeout=min(self.timeout, TOKENIZE_TIMEOUT_S)
        )

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """The prompt tokens of a chat completion of ``messages`` (with ``tools``): what its
        ``usage.prompt_tokens`` will say, chat template and tool definitions included.

        The service counts them with the served model's own tokenizer (``POST /tokenize``)
        without waking the GPU. Raises a ``VLLMAutoscaleError`` when it cannot count.
        """
        body: dict[str, Any] = {
            "messages": to_openai_messages(messages),
            "add_generation_prompt": True,
        }
        if tools:
            body["tools"] = [convert_to_openai_tool(tool) for tool in tools]
        # The template options a chat request sends change the prompt (Qwen3's thinking).
        template_kwargs = (self.extra_body or {}).get("chat_template_kwargs")
        template_kwargs = template_kwargs or self.model_kwargs.get("chat_template_kwargs")
        if template_kwargs:
            body["chat_template_kwargs"] = template_kwargs
        return int(self._tokenize(body)["count"])

    def get_num_tokens(self, text: str) -> int:
        """Tokens in ``text`` for the served model's tokenizer (no special tokens added),
        counted by the service (``POST /tokenize``) without waking the GPU."""
        if self.custom_get_token_ids is not None:
            return len(self.custom_get_token_ids(text))
        return int(self._tokenize({"prompt": text, "add_special_tokens": False})["count"])

    def get_token_ids(self, text: str) -> list[int]:
        """The served model's token ids for ``text``, from the service (``POST /tokenize``)."""
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        return list(self._tokenize({"prompt": text, "add_special_tokens": False})["tokens"])

    def close(self) -> None:
        """Close the sync HTTP client (the async ones close with ``aclose``)."""
        self._client.close()

    async def aclose(self) -> None:
        """Close the async HTTP client of the running event loop."""
        await self._client.aclose()

    # -- tools and structured output --------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (pydantic models, functions, ``BaseTool``s or OpenAI tool dicts).

        ``tool_choice``: "auto", "none", "required" (or "any", or True), a tool's name, or an
        OpenAI tool-choice dict.
        """
        formatted = [convert_to_openai_tool(tool, strict=strict) for tool in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = _tool_choice(tool_choice, formatted)
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        # No tools, no `tools` field: vLLM refuses an empty list, and langchain's create_agent
        # binds one (with `response_format`) when the profile picks its ProviderStrategy.
        return super().bind(**({"tools": formatted} if formatted else {}), **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Return output matching ``schema`` (pydantic class, TypedDict, or JSON schema dict).

        ``method``: "json_schema" (default: vLLM's constrained decoding), "function_calling"
        (a forced tool call) or "json_mode" (any JSON object; describe the shape in the prompt).
        ``include_raw=True`` returns ``{"raw", "parsed", "parsing_error"}``.
        """
        if kwargs:
            raise ValueError(f"unexpected arguments: {sorted(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method != "json_mode" and schema is None:
            raise ValueError(f"method={method!r} needs a schema")
        ls_format: dict[str, Any] = {"kwargs": {"method": method, "strict": strict}}
        if schema is not None:
            ls_format["schema"] = convert_to_json_schema(schema)

        parser: Runnable[Any, Any]
        if method == "function_calling":
            tool = convert_to_openai_tool(schema, strict=strict)  # type: ignore[arg-type]
            name = tool["function"]["name"]
            llm = self.bind_tools(
                [tool], tool_choice=name, strict=strict, ls_structured_output_format=ls_format
            )
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method == "json_schema":
            json_schema = convert_to_json_schema(schema)  # type: ignore[arg-type]
            response_format = {
                "type": "json_schema",
                "json_schema": {
                    "name": json_schema.get("title", "output"),
                    "schema": json_schema,
                    **({"strict": strict} if strict is not None else {}),
                },
            }
            llm = self.bind(response_format=response_format, ls_structured_output_format=ls_format)
            parser = (
                PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()
            )  # type: ignore[arg-type]
        elif method == "json_mode":
            llm = self.bind(
                response_format={"type": "json_object"}, ls_structured_output_format=ls_format
            )
            parser = (
                PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()
            )  # type: ignore[arg-type]
        else:
            raise ValueError(
                f"unknown method {method!r}: use 'json_schema', 'function_calling' or 'json_mode'"
            )

        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        ).with_fallbacks(
            [RunnablePassthrough.assign(parsed=lambda _: None)],
            exception_key="parsing_error",
        )
        return RunnableMap(raw=llm) | parsed


class _ServiceProfile:
    """``ChatVLLMAutoscale.profile``: unless one was given, the served model's profile, asked
    of the service's ``/v1/models`` the first time it is read and kept (never at
    construction; the wrapper answers without waking the GPU; None if it cannot be reached).

    A data descriptor on the class outranks the instance ``__dict__``, where pydantic keeps
    the field's value; assigning ``profile`` still stores the value there as usual.
    """

    def __get__(self, obj: ChatVLLMAutoscale | None, owner: type | None = None) -> Any:
        if obj is None:  # as for any pydantic field; a subclass then inherits the field as is
            raise AttributeError("profile")
        value = obj.__dict__.get("profile")
        if value is None and obj._profile_due():
            value = obj.__dict__["profile"] = obj._fetch_profile()
        return value

    def __set__(self, obj: ChatVLLMAutoscale, value: ModelProfile | None) -> None:
        obj.__dict__["profile"] = value


# Set after the class is built: in the class body pydantic would take it for the field's default.
ChatVLLMAutoscale.profile = _ServiceProfile()  # type: ignore[assignment]


def _profile_from_models(answer: dict[str, Any], model: str | None) -> ModelProfile | None:
    """A LangChain profile from the wrapper's ``/v1/models``: the context length and the
    capabilities the engine runs with (a plain vLLM server gives the context length only)."""
    cards = [card for card in answer.get("data") or [] if isinstance(card, dict)]
    # A model the service does not serve gets no profile (the service refuses its requests).
    card = next((c for c in cards if model is None or c.get("id") == model), None)
    if card is None:
        return None
    profile = ModelProfile(text_inputs=True, text_outputs=True)
    if isinstance(card.get("id"), str):
        profile["name"] = card["id"]
    if isinstance(card.get("max_model_len"), int):
        profile["max_input_tokens"] = card["max_model_len"]
    caps = card.get("capabilities")
    if not isinstance(caps, dict):
        return profile if "max_input_tokens" in profile else None
    if isinstance(caps.get("max_output_tokens"), int):
        profile["max_output_tokens"] = caps["max_output_tokens"]
    tools = bool(caps.get("tool_calling"))
    images = bool(caps.get("image_inputs"))
    profile.update(
        ModelProfile(
            tool_calling=tools,
            tool_choice=tools,
            tool_call_streaming=tools,
            # vLLM's json_schema response_format: langchain's create_agent then uses its
            # ProviderStrategy (constrained decoding) rather than a tool call for the answer.
            structured_output=bool(caps.get("structured_output")),
            reasoning_output=bool(caps.get("reasoning")),
            image_inputs=images,
            image_url_inputs=images,
            temperature=True,
        )
    )
    return profile


def _tool_choice(choice: dict[str, Any] | str | bool, tools: list[dict[str, Any]]) -> Any:
    if isinstance(choice, dict):
        return choice
    if choice is True or choice in ("any", "required"):
        if choice is True and len(tools) == 1:
            return {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
        return "required"
    if choice in ("auto", "none"):
        return choice
    if isinstance(choice, str):
        names = [t["function"]["name"] for t in tools]
        if choice not in names:
            raise ValueError(f"tool_choice {choice!r} is not one of the bound tools {names}")
        return {"type": "function", "function": {"name": choice}}
    if choice is False:
        return "none"
    raise ValueError(f"unsupported tool_choice {choice!r}")
