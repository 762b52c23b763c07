"""Token counts in the wrapper: the served model's tokenizer and chat template, no GPU.

``POST /tokenize`` answers what vLLM's own ``/tokenize`` would, computed in the wrapper so
that counting never wakes the engine. The prompt is built the way vLLM 0.32 builds it for a
chat completion (``vllm/renderers/chat_utils.py`` and ``hf.py``):

- each message's content is flattened to the template's content format: one string with the
  text parts joined by newlines, or, for a template that loops over ``message.content``, a list
  of text parts;
- assistant tool-call ``arguments`` are parsed from JSON strings into objects;
- tools are rendered as vLLM dumps its ``ChatCompletionToolsParam`` (``description`` and
  ``parameters`` kept even when null, ``strict`` only when set), since ``tojson`` shows it all;
- ``apply_chat_template`` with the engine's ``--chat-template`` (or the tokenizer's own),
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
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

from ...core.model_info import ModelInfo

__all__ = ["TokenCountError", "TokenCounter"]

log = logging.getLogger("vllm_autoscale.wrapper")

ContentFormat = Literal["string", "openai"]
RETRY_LOAD_AFTER_S = 60.0
"""A tokenizer that failed to load is tried again after this long, not on every request."""
HARMONY_MODEL_TYPES = frozenset({"gpt_oss"})
"""Models whose prompts vLLM renders with OpenAI's Harmony encoder, not a chat template
(vLLM decides on ``model_type == "gpt_oss"``): the wrapper cannot reproduce those counts."""

# vLLM's text content parts and the key that holds each one's text.
_TEXT_PARTS = {
    "text": "text",
    "input_text": "text",
    "output_text": "text",
    "refusal": "refusal",
    "thinking": "thinking",
}


class TokenCountError(Exception):
    """A count that cannot be made: the request's fault (4xx, ``param`` names the field) or
    the wrapper's (501: no tokenizer here)."""

    def __init__(
        self, message: str, *, status: int = HTTPStatus.BAD_REQUEST, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.param = message, int(status), param


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
            from transformers import AutoTokenizer
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
        tool_dicts = vllm_tools(tools) if tools is not None else None
        with self._use_lock:
            tokenizer = loaded.tokenizer
            try:  # the engine's template, or the tokenizer's (its "tool_use" one with tools)
                template = tokenizer.get_chat_template(loaded.template, tools=tool_dicts)
            except ValueError as exc:
                raise TokenCountError(
                    f"{self.info.name} has no chat template to count with: {exc}",
                    status=HTTPStatus.NOT_IMPLEMENTED,
                ) from exc
            conversation = vllm_conversation(messages, self._content_format(template))
            if any(m["role"] == "developer" for m in conversation) and not (
                '"developer"' in template or "'developer'" in template
            ):
                conversation = _developer_as_system(conversation)
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
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "config.json", revision=revision))
        value = json.loads(path.read_text()).get("model_type")
    except Exception:  # no config.json: nothing says the model is special
        return None
    return value if isinstance(value, str) else None


# -- vLLM's request preprocessing, for text models ---------------------------------------------


def vllm_tools(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``tools`` as vLLM hands them to the chat template: ``ChatCompletionToolsParam``
    dumped, with its fields in order and ``strict``/``defer_loading`` only when set."""
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or tool.get("type", "function") != "function"
        ):
            raise TokenCountError(
                f"tools[{i}] is not an OpenAI function tool "
                '({"type": "function", "function": {"name": ..., "parameters": ...}})',
                param=f"tools.{i}",
            )
        dumped: dict[str, Any] = {
            "name": function["name"],
            "description": function.get("description"),
            "parameters": function.get("parameters"),
        }
        if function.get("strict") is not None:
            dumped["strict"] = function["strict"]
        defer = tool.get("defer_loading")
        function_defer = function.get("defer_loading")
        if function_defer is None:
            function_defer = defer  # vLLM copies the tool's flag into its function
        if function_defer is not None:
            dumped["defer_loading"] = function_defer
        entry: dict[str, Any] = {"type": "function", "function": dumped}
        if defer is not None:
            entry["defer_loading"] = defer
        out.append(entry)
    return out


def vllm_conversation(
    messages: Sequence[dict[str, Any]], content_format: ContentFormat
) -> list[dict[str, Any]]:
    """The messages as vLLM passes them to the chat template (text content only)."""
    conversation: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message["role"]
        texts = _texts(message.get("content"), i)
        turn: dict[str, Any] = {
            "role": role,
            "content": (
                [{"type": "text", "text": t} for t in texts]
                if content_format == "openai"
                else "\n".join(texts)
            ),
        }
        if role == "assistant":
            calls = message.get("tool_calls")
            if calls is not None:
                parsed = _tool_calls(calls, i)
                if parsed:  # vLLM drops an empty list: the template takes the plain path
                    turn["tool_calls"] = parsed
            reasoning = message.get("reasoning")
            if reasoning is not None:
                turn["reasoning"] = turn["reasoning_content"] = reasoning
        elif role == "tool":
            if "tool_call_id" in message:
                turn["tool_call_id"] = message["tool_call_id"]
            turn["content"] = "\n".join(texts)  # tool results are plain text for templates
        if isinstance(message.get("name"), str):
            turn["name"] = message["name"]
        if role == "developer":
            turn["tools"] = message.get("tools")
        conversation.append(turn)
    return conversation


def _texts(content: Any, index: int) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        key = _TEXT_PARTS.get(kind)  # type: ignore[arg-type]
        if key is None:
            raise TokenCountError(
                f"only text can be counted here: messages[{index}] has a {kind!r} part",
                param=f"messages.{index}.content",
            )
        text = part.get(key)
        if text is not None:  # vLLM skips a text part without text
            texts.append(text)
    return texts


def _tool_calls(calls: Any, index: int) -> list[dict[str, Any]]:
    """Assistant tool calls with their ``arguments`` as objects (what templates expect);
    arguments that are not a JSON object become ``{}``, as vLLM makes them."""
    if not isinstance(calls, list):
        raise TokenCountError(
            f"messages[{index}].tool_calls must be a list", param=f"messages.{index}.tool_calls"
        )
    out: list[dict[str, Any]] = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise TokenCountError(
                "chat completions only support assistant tool_calls of type 'function'.",
                param=f"messages.{index}.tool_calls",
            )
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = {}
        if not isinstance(arguments, dict):
            arguments = {}
        out.append({**call, "function": {**function, "arguments": arguments}})
    return out


def _developer_as_system(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """vLLM's fallback for a template without the developer role: developer turns become
    system turns, and all system turns merge into one, first."""
    turns = [
        {k: v for k, v in m.items() if k != "tools"} | {"role": "system"}
        if m["role"] == "developer"
        else m
        for m in conversation
    ]
    systems = [i for i, m in enumerate(turns) if m["role"] == "system"]
    if not systems or systems == [0]:
        return turns
    contents: list[str] = []
    for i in systems:
        content = turns[i].get("content", "")
        if isinstance(content, list):
            content = "\n".join(
                p["text"] if isinstance(p, dict) else p
                for p in content
                if isinstance(p, str) or (isinstance(p, dict) and "text" in p)
            )
        if content:
            contents.append(content)
    rest = [m for m in turns if m["role"] != "system"]
    return [{"role": "system", "content": "\n\n".join(contents)}, *rest]


def _template_reason(exc: BaseException) -> str:
    """The most specific reason in an error chain: a Jinja error's own message if any."""
    import jinja2

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, jinja2.TemplateError):
            return str(current)
        current = current.__cause__ or current.__context__
    return str(exc)


# -- the template's content format: vLLM's detection (vllm/renderers/hf.py) ---------------------


def detect_content_format(template: str) -> ContentFormat:
    """ "openai" when the template loops over a message's content (so each message's content
    must be a list of parts), else "string"; vLLM decides the same way, from the template's
    syntax tree. A template that does not parse is treated as "string", as vLLM does."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        tree = _compile_jinja_template(template).environment.parse(template)
    except Exception:
        return "string"
    try:
        next(_content_loops(tree))
    except StopIteration:
        return "string"
    except Exception:
        return "string"
    return "openai"


def _is_var(node: Any, name: str) -> bool:
    import jinja2.nodes as n

    return isinstance(node, n.Name) and node.ctx == "load" and node.name == name


def _is_attr(node: Any, name: str, key: str) -> bool:
    import jinja2.nodes as n

    if isinstance(node, n.Getitem):
        return _is_var(node.node, name) and isinstance(node.arg, n.Const) and node.arg.value == key
    if isinstance(node, n.Getattr):
        return _is_var(node.node, name) and node.attr == key
    return False


def _is_var_or_elems(node: Any, name: str, key: str | None = None) -> bool:
    import jinja2.nodes as n

    if isinstance(node, n.Filter):
        return node.node is not None and _is_var_or_elems(node.node, name, key)
    if isinstance(node, n.Test):
        return _is_var_or_elems(node.node, name, key)
    if isinstance(node, n.Getitem) and isinstance(node.arg, n.Slice):
        return _is_var_or_elems(node.node, name, key)
    return _is_attr(node, name, key) if key else _is_var(node, name)


def _aliases(root: Any, name: str) -> list[str]:
    """``name`` and every variable assigned from it (``{% set msgs = messages[1:] %}``)."""
    import jinja2.nodes as n

    found, queue = [name], deque([name])
    while queue:
        current = queue.popleft()
        for assign in root.find_all(n.Assign):
            if _is_var_or_elems(assign.node, current) and isinstance(assign.target, n.Name):
                found.append(assign.target.name)
                if assign.target.name != current:
                    queue.append(assign.target.name)
    return found


def _content_loops(root: Any) -> Iterator[Any]:
    """Loops over a message's content, directly or through a macro's parameter."""
    import jinja2.nodes as n

    messages = _aliases(root, "messages")
    message_vars = [
        loop.target.name
        for loop in root.find_all(n.For)
        if isinstance(loop.target, n.Name) and any(_is_var_or_elems(loop.iter, v) for v in messages)
    ]

    def is_content(node: Any) -> bool:
        return any(_is_var_or_elems(node, v, "content") for v in message_vars)

    # Macros called with a message's content: the loops inside over that parameter count.
    params_by_loop: dict[int, set[str]] = {}
    in_macros: set[int] = set()
    for macro in root.find_all(n.Macro):
        names = [arg.name for arg in macro.args]
        params: set[str] = set()
        for call in root.find_all(n.Call):
            if isinstance(call.node, n.Name) and call.node.name == macro.name:
                args = call.args[: len(names)]
                params.update(names[i] for i, arg in enumerate(args) if is_content(arg))
                params.update(
                    kw.key for kw in call.kwargs if kw.key in names and is_content(kw.value)
                )
        for loop in macro.find_all(n.For):
            in_macros.add(id(loop))
            if params:
                params_by_loop[id(loop)] = params

    for loop in root.find_all(n.For):
        over_param = isinstance(loop.iter, n.Name) and (
            loop.iter.name in params_by_loop.get(id(loop), ())
            or (id(loop) not in in_macros and loop.iter.name == "content")
        )
        if over_param or is_content(loop.iter):
            yield loop
