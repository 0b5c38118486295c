"""Records to the messages a Hugging Face chat template renders, tool calls included.

The internal schema (finetune/data/records.py) has LLaMA-Factory's tool roles: a `function_call` turn is the
assistant calling a tool (content: the JSON text `{"name": ..., "arguments": {...}}`, or a list of such calls)
and an `observation` turn is what the tool returned; a record may list its `tools` (function JSON schemas).
Chat templates take the OpenAI / Hugging Face shape instead: an assistant message with `tool_calls`, a `tool`
message, and `tools=[{"type": "function", "function": schema}]`. Templates without tool support get the
same information as plain text (see `ToolSupport`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError
from transformers import PreTrainedTokenizerBase

FUNCTION_CALL, OBSERVATION = "function_call", "observation"
TRAINED_ROLES = ("assistant", FUNCTION_CALL)  # the turns the model learns to produce
TOOLS_PREAMBLE = (
    "You can call the functions described below (JSON schemas). To call one, answer with only a JSON object "
    '{"name": <function name>, "arguments": <arguments object>}; its result comes back in the next turn.\n'
)
_PROBE = "zz_probe_fn_7f1c"  # printable: templates print tool schemas through tojson, which escapes control characters


class RecordFormatError(ValueError):
    """One record cannot be rendered (malformed tool call, template refusal); the record fails, not the stage."""


def tool_calls(content: str) -> list[dict[str, Any]]:
    """The calls of a `function_call` turn, each `{"name": str, "arguments": dict}`.

    Raises:
        RecordFormatError: the content is not a JSON call object (or list of them).
    """
    try:
        parsed = json.loads(content)
    except json.JSONDecodeError as err:
        raise RecordFormatError(f"function_call content is not JSON ({err.msg} at char {err.pos})") from err
    calls = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise RecordFormatError('function_call content must be {"name": str, "arguments": {...}} (or a list)')
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):  # some exports double-encode the arguments
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as err:
                raise RecordFormatError(f"function_call arguments are a string that is not JSON: {err.msg}") from err
        out.append({"name": call["name"], "arguments": arguments})
    return out


def hf_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Function schemas in the `{"type": "function", "function": schema}` shape templates expect."""
    if not tools:
        return None
    return [
        t if t.get("type") == "function" and "function" in t else {"type": "function", "function": t} for t in tools
    ]


@dataclass(frozen=True)
class ToolSupport:
    """Which tool features a template renders; each missing one falls back to plain text.

    tools: the template prints `tools=` (else: the schemas go into the system turn, after TOOLS_PREAMBLE);
    tool_calls: it prints an assistant message's `tool_calls` (else: the call's JSON text is the assistant's
    content, which is what the model is then trained to write); tool_role: it prints `tool` messages (else:
    the tool result is a user turn).
    """

    tools: bool
    tool_calls: bool
    tool_role: bool


def _renders(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list | None = None) -> bool:
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    except (JinjaTemplateError, TypeError, KeyError, AttributeError):
        return False
    return _PROBE in text


def _probe_support(tokenizer: PreTrainedTokenizerBase) -> ToolSupport:
    user = {"role": "user", "content": "hi"}
    call = {"type": "function", "function": {"name": _PROBE, "arguments": {}}}
    schema = {"type": "function", "function": {"name": _PROBE, "description": "", "parameters": {"type": "object"}}}
    return ToolSupport(
        tools=_renders(tokenizer, [user], [schema]),
        tool_calls=_renders(tokenizer, [user, {"role": "assistant", "content": "", "tool_calls": [call]}]),
        tool_role=_renders(
            tokenizer,
            [user, {"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": _PROBE}],
        )
        or _renders(tokenizer, [user, {"role": "assistant", "content": "ok"}, {"role": "tool", "content": _PROBE}]),
    )


def tool_support(tokenizer: PreTrainedTokenizerBase) -> ToolSupport:
    """What the tokenizer's current chat template does with tools, tool calls and tool results (probed once)."""
    cached = getattr(tokenizer, "_finetune_tool_support", None)
    if cached is None or cached[0] != tokenizer.chat_template:
        cached = (tokenizer.chat_template, _probe_support(tokenizer))
        tokenizer._finetune_tool_support = cached
    return cached[1]


def hf_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], tools: list[dict[str, Any]] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) to pass to `apply_chat_template`, one output message per input turn.

    Raises:
        RecordFormatError: a function_call turn is not a JSON call.
    """
    has_tool_turns = any(m["role"] in (FUNCTION_CALL, OBSERVATION) for m in messages)
    support = tool_support(tokenizer) if (tools or has_tool_turns) else ToolSupport(True, True, True)
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == FUNCTION_CALL:
            calls = tool_calls(m["content"])
            if support.tool_calls:
                fns = [{"type": "function", "function": c} for c in calls]
                out.append({"role": "assistant", "content": "", "tool_calls": fns})
            else:
                out.append({"role": "assistant", "content": m["content"]})
        elif m["role"] == OBSERVATION:
            out.append({"role": "tool" if support.tool_role else "user", "content": m["content"]})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    schemas = hf_tools(tools)
    if schemas and not support.tools:
        listing = TOOLS_PREAMBLE + "\n".join(json.dumps(s["function"], ensure_ascii=False) for s in schemas)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + listing}
        else:
            out.insert(0, {"role": "system", "content": listing})
        return out, None
    return out, schemas


def trained_turns(messages: list[dict[str, str]], converted: list[dict[str, Any]]) -> list[int]:
    """Indexes in `converted` of the turns the model is trained on (assistant answers and tool calls)."""
    offset = len(converted) - len(messages)  # a system turn inserted for the tool listing shifts the rest
    return [i + offset for i, m in enumerate(messages) if m["role"] in TRAINED_ROLES]
