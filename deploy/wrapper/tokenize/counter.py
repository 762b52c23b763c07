"""Token counts in the wrapper: the served model's tokenizer and chat template, no GPU.

``POST /tokenize`` answers what vLLM's own ``/tokenize`` would, computed in the wrapper so
that counting never wakes the engine. ``TokenCounter`` loads the model's tokenizer (once, on
first use) and counts; the prompt it counts is built the way vLLM 0.32 builds it for a chat
completion, by the port of vLLM's chat renderer in ``vllm_0_32_renderer.py`` (content
flattened to the template's content format, tool-call arguments as objects, tools as vLLM
dumps them, developer turns as system turns for a template without that role), then
``apply_chat_template`` with the engine's ``--chat-template`` (or the tokenizer's own),
rendered to text, then encoded without special tokens (a chat template adds its own).

The live tests hold the counts to vLLM's ``usage.prompt_tokens`` for the same messages.

transformers is imported on first use only, in a worker thread: the wrapper's import closure
stays light (``tests/unit_tests/test_layering.py``), the event loop never waits on a
tokenizer, and a wrapper without transformers answers 501 instead of guessing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from ...core.errors import ServiceError
from ...core.model_info import ModelInfo
from .vllm_0_32_renderer import (
    HARMONY_MODEL_TYPES,
    ContentFormat,
    RenderError,
    detect_content_format,
    developer_as_system,
    supports_developer_role,
    vllm_conversation,
    vllm_tools,
)

# The renderer's functions are importable from here too (where they lived before the split).
__all__ = [
    "TokenCountError",
    "TokenCounter",
    "detect_content_format",
    "vllm_conversation",
    "vllm_tools",
]

log = logging.getLogger("vllm_autoscale.wrapper")

RETRY_LOAD_AFTER_S = 60.0
"""A tokenizer that failed to load is tried again after this long, not on every request."""


class TokenCountError(ServiceError):
    """A count that cannot be made: the request's fault (4xx, ``param`` names the field) or
    the wrapper's (501: no tokenizer here). ``status`` is the base's ``status_code``."""

    status_code = HTTPStatus.BAD_REQUEST
    error_type = "invalid_request_error"

    def __init__(
        self, message: str, *, status: int = HTTPStatus.BAD_REQUEST, param: str | None = None
    ) -> None:
        status = int(status)
        not_implemented = status == HTTPStatus.NOT_IMPLEMENTED
        super().__init__(
            message,
            status_code=status,
            error_type="not_implemented_error" if not_implemented else None,
            param=param,
        )

    @property
    def status(self) -> int:
        return self.status_code


@dataclass(frozen=True)
class _Loaded:
    tokenizer: Any
    template: str | None
    """The engine's ``--chat-template`` text; None: the tokenizer's own template."""


class TokenCounter:
    """Counts prompts for ``info``'s model; loads its tokenizer once, on first use."""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        self._loaded: _Loaded | None = None
        self._failure: tuple[TokenCountError, float] | None = None
        # Threading locks, not asyncio ones: all work runs in worker threads, and one Rust
        # tokenizer must not be used by two threads at once ("Already borrowed").
        self._load_lock = threading.Lock()
        self._use_lock = threading.Lock()
        self._formats: dict[str, ContentFormat] = {}

    @property
    def at_hand(self) -> bool:
        """Loaded, or loadable without the network (a local folder): counting now costs no
        download."""
        return self._loaded is not None or bool(
            self.info.tokenizer and Path(self.info.tokenizer).is_dir()
        )

    # -- the public API (async: the work runs in a thread) ------------------------------------

    async def count_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        add_special_tokens: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        return_token_strs: bool = False,
    ) -> dict[str, Any]:
        """vLLM's ``/tokenize`` answer for a chat: the prompt a chat completion of these
        messages (and tools) would send to the model."""
        return await asyncio.to_thread(
            self._count_chat, messages, tools, add_generation_prompt, continue_final_message,
            add_special_tokens, chat_template_kwargs or {}, return_token_strs,
        )  # fmt: skip

    async def count_prompt(
        self, prompt: str, *, add_special_tokens: bool = True, return_token_strs: bool = False
    ) -> dict[str, Any]:
        """vLLM's ``/tokenize`` answer for a plain text prompt."""
        return await asyncio.to_thread(
            self._count_prompt, prompt, add_special_tokens, return_token_strs
        )

    # -- loading --------------------------------------------------------------------------------

    def _get(self) -> _Loaded:
        with self._load_lock:
            if self._loaded is not None:
                return self._loaded
            if self._failure is not None:
                error, at = self._failure
                if time.monotonic() - at < RETRY_LOAD_AFTER_S:
                    raise TokenCountError(error.message, status=error.status)
            try:
                self._loaded = self._load()
            except TokenCountError as exc:
                log.warning("token counting is unavailable: %s", exc.message)
                self._failure = (exc, time.monotonic())
                raise
            self._failure = None
            return self._loaded

    def _load(self) -> _Loaded:
        info = self.info
        if not info.tokenizer:
            raise TokenCountError(
                f"the wrapper does not know where {info.name}'s tokenizer is",
                status=HTTPStatus.NOT_IMPLEMENTED,
            )
        try:
            # Not PLC0415 (import outside top level) by mistake: transformers is loaded on
            # first use, in a worker thread (a plain `noqa: PLC0415` fails RUF100 while the
            # project does not select PLC0415).
            from transformers import AutoTokenizer  # noqa: PLC0415 - heavy, and only when a tokenizer is first needed
        except ImportError:
            raise TokenCountError(
                "this wrapper cannot count tokens: it has no 'transformers' package to load "
                f"{info.name}'s tokenizer with (pip install 'transformers>=5.16')",
                status=HTTPStatus.NOT_IMPLEMENTED,
            ) from None
        local = Path(info.tokenizer).is_dir()
        if _model_type(info.tokenizer, None if local else info.revision) in HARMONY_MODEL_TYPES:
            raise TokenCountError(
                f"vLLM renders {info.name}'s prompts with the Harmony encoder, not its chat "
                "template: the wrapper cannot count them exactly, and does not guess",
                status=HTTPStatus.NOT_IMPLEMENTED,
            )
        started = time.monotonic()
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                info.tokenizer,
                revision=None if local else info.revision,
                local_files_only=local,  # a local folder never reaches for the Hub
            )
        except Exception as exc:
            hint = "" if local else " (a gated model needs HF_TOKEN in the wrapper's secret)"
            raise TokenCountError(
                f"cannot load {info.name}'s tokenizer from {info.tokenizer!r}: {exc}{hint}",
                status=HTTPStatus.NOT_IMPLEMENTED,
            ) from exc
        template = Path(info.chat_template).read_text() if info.chat_template else None
        log.info("loaded %s's tokenizer in %.1f s", info.name, time.monotonic() - started)
        return _Loaded(tokenizer, template)

    # -- counting (in a worker thread) ------------------------------------------------------

    def _count_prompt(
        self, prompt: str, add_special_tokens: bool, return_token_strs: bool
    ) -> dict[str, Any]:
        loaded = self._get()
        with self._use_lock:
            ids = loaded.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
            return self._answer(loaded, ids, return_token_strs)

    def _count_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None,
        add_generation_prompt: bool,
        continue_final_message: bool,
        add_special_tokens: bool,
        template_kwargs: dict[str, Any],
        return_token_strs: bool,
    ) -> dict[str, Any]:
        if add_generation_prompt and continue_final_message:
            raise TokenCountError(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                param="continue_final_message",
            )
        if reserved := {"chat_template", "tokenize"} & template_kwargs.keys():
            raise TokenCountError(
                f"chat_template_kwargs may not set {sorted(reserved)}",
                param="chat_template_kwargs",
            )
        loaded = self._get()
        try:
            tool_dicts = vllm_tools(tools) if tools is not None else None
        except RenderError as exc:
            raise TokenCountError(exc.message, param=exc.param) from exc
        with self._use_lock:
            tokenizer = loaded.tokenizer
            try:  # the engine's template, or the tokenizer's (its "tool_use" one with tools)
                template = tokenizer.get_chat_template(loaded.template, tools=tool_dicts)
            except ValueError as exc:
                raise TokenCountError(
                    f"{self.info.name} has no chat template to count with: {exc}",
                    status=HTTPStatus.NOT_IMPLEMENTED,
                ) from exc
            try:
                conversation = vllm_conversation(messages, self._content_format(template))
            except RenderError as exc:
                raise TokenCountError(exc.message, param=exc.param) from exc
            developer = any(m["role"] == "developer" for m in conversation)
            if developer and not supports_developer_role(template):
                conversation = developer_as_system(conversation)
            kwargs = {
                **template_kwargs,
                "add_generation_prompt": add_generation_prompt,
                "continue_final_message": continue_final_message,
            }
            try:
                text = tokenizer.apply_chat_template(
                    conversation, tools=tool_dicts, chat_template=template, tokenize=False,
                    **kwargs,
                )  # fmt: skip
            except Exception as exc:  # the template's own checks (raise_exception) included
                raise TokenCountError(
                    f"the chat template rejected the messages: {_template_reason(exc)}",
                    param="messages",
                ) from exc
            ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
            return self._answer(loaded, ids, return_token_strs)

    def _answer(self, loaded: _Loaded, ids: list[int], token_strs: bool) -> dict[str, Any]:
        """vLLM's ``TokenizeResponse``."""
        return {
            "count": len(ids),
            "max_model_len": self.info.max_model_len,
            "tokens": ids,
            "token_strs": loaded.tokenizer.convert_ids_to_tokens(ids) if token_strs else None,
        }

    def _content_format(self, template: str) -> ContentFormat:
        fmt = self._formats.get(template)
        if fmt is None:
            fmt = self._formats[template] = detect_content_format(template)
        return fmt


def _model_type(source: str, revision: str | None) -> str | None:
    """``model_type`` from the model's ``config.json`` (a local folder's, or the Hub's)."""
    try:
        if Path(source).is_dir():
            path = Path(source) / "config.json"
        else:
            from huggingface_hub import hf_hub_download  # noqa: PLC0415 - heavy, and only when a tokenizer is first needed

            path = Path(hf_hub_download(source, "config.json", revision=revision))
        value = json.loads(path.read_text()).get("model_type")
    except Exception:  # no config.json: nothing says the model is special
        return None
    return value if isinstance(value, str) else None


def _template_reason(exc: BaseException) -> str:
    """The most specific reason in an error chain: a Jinja error's own message if any."""
    import jinja2  # noqa: PLC0415 - heavy, and only when a tokenizer is first needed

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, jinja2.TemplateError):
            return str(current)
        current = current.__cause__ or current.__context__
    return str(exc)
