"""One raw row (Alpaca, ShareGPT or OpenAI messages, with or without tool calls) to a conversation.

Tool calling follows LLaMA-Factory's sharegpt roles (`function_call` turns whose value is the JSON call,
`observation` turns with the tool's result, a `tools` column holding the function schemas as JSON text)
and OpenAI's messages (`tool_calls` on an assistant turn, `tool` turns, a `tools` list). Both become the
internal schema: `function_call` turns whose content is `{"name": ..., "arguments": {...}}` as JSON text
(one turn per call), `observation` turns, and the record's `tools` as a parsed list of function schemas.

Turn order is decided by named rules (`TURN_RULES`); a conversation that breaks one is quarantined with
that rule as its reason, since repairing it (reordering, merging, dropping turns) would change the data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from finetune.data import raw_json
from finetune.data.records import ASSISTANT, FUNCTION_CALL, OBSERVATION, ROLES, SYSTEM, TRAINED_ROLES, USER

SHAREGPT_ROLES = {"human": USER, "gpt": ASSISTANT, "tool": OBSERVATION} | {r: r for r in ROLES}
OPENAI_ROLES = {"tool": OBSERVATION, "function": OBSERVATION} | {r: r for r in ROLES}

TURN_RULES = {
    "system_turn_mid_conversation": "a system turn after the first turn: chat templates put the system prompt "
    "first, and moving or merging it would change what the model is told",
    "no_user_turn": "no user turn: nothing asks for the responses that would be trained",
    "starts_with_assistant": "the first turn after the system prompt is the assistant's: it answers no prompt",
    "consecutive_user_turns": "two user turns in a row: the first got no answer, and merging or dropping one "
    "would change what was asked",
    "consecutive_assistant_turns": "two assistant answers in a row: which one answers the prompt is unknown",
    "observation_without_call": "a tool result that follows no function_call",
    "no_response_at_end": "the last turn is not the assistant's (or a tool call): it gets no trained answer",
}


class RowError(ValueError):
    """One row has the wrong shape; the message names the field."""


class TurnOrderError(RowError):
    """A conversation breaks one of TURN_RULES; `rule` is the quarantine reason."""

    def __init__(self, rule: str, turn: int):
        self.rule = rule
        super().__init__(f"turn {turn}: {TURN_RULES[rule]}")


@dataclass
class Conversation:
    """A row's turns in the internal schema and the function schemas it may call (None: no tools)."""

    messages: list[dict[str, str]]
    tools: list[dict[str, Any]] | None = None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # NaN from CSV/Parquet


def _text(row: dict[str, Any], key: str, required: bool) -> str:
    value = row.get(key)
    if _missing(value):
        if required:
            raise RowError(f"missing field '{key}'")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field '{key}' must be a string, got {type(value).__name__}")
    return value


def _json_field(value: Any, field: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return raw_json.loads(value)
    except ValueError as exc:
        raise RowError(f"field '{field}' is not valid JSON ({raw_json.describe(exc)})") from None


def parse_tools(value: Any, field: str = "tools") -> list[dict[str, Any]] | None:
    """A tools column (JSON text or a list; OpenAI's `{"type": "function", "function": {...}}` unwrapped)."""
    if _missing(value) or value == "":
        return None
    tools = _json_field(value, field)
    tools = [tools] if isinstance(tools, dict) else tools
    if not isinstance(tools, list):
        raise RowError(f"field '{field}' must be a list of function schemas, got {type(tools).__name__}")
    out = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            tool = tool["function"]
        if not (isinstance(tool, dict) and isinstance(tool.get("name"), str) and tool["name"]):
            raise RowError(f"field '{field}[{i}]' must be a function schema with a 'name'")
        out.append(tool)
    return out or None


def _call_text(call: Any, field: str) -> str:
    """One call as the internal JSON text `{"name": ..., "arguments": {...}}`."""
    if isinstance(call, dict) and isinstance(call.get("function"), dict):  # OpenAI tool_calls item
        call = call["function"]
    if not (isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"]):
        raise RowError(f'field \'{field}\' must be a call {{"name": ..., "arguments": {{...}}}}')
    arguments = call.get("arguments")
    arguments = {} if _missing(arguments) or arguments == "" else _json_field(arguments, f"{field}.arguments")
    if not isinstance(arguments, dict):
        raise RowError(f"field '{field}.arguments' must be an object, got {type(arguments).__name__}")
    return json.dumps({"name": call["name"], "arguments": arguments}, ensure_ascii=False)


def _calls(value: Any, field: str) -> list[dict[str, str]]:
    calls = _json_field(value, field)
    calls = calls if isinstance(calls, list) else [calls]  # a list: parallel calls, one turn each
    if not calls:
        raise RowError(f"field '{field}' holds no call")
    return [{"role": FUNCTION_CALL, "content": _call_text(c, f"{field}[{i}]")} for i, c in enumerate(calls)]


def _turn(turn: Any, field: str, role_key: str, text_key: str, roles: dict[str, str]) -> list[dict[str, str]]:
    if not isinstance(turn, dict):
        raise RowError(f"field '{field}' must be an object")
    role = roles.get(str(turn.get(role_key)))
    if role is None:
        raise RowError(f"field '{field}.{role_key}' has unknown role {turn.get(role_key)!r}")
    content = turn.get(text_key)
    if role == FUNCTION_CALL:
        return _calls(content, f"{field}.{text_key}")
    calls = turn.get("tool_calls") or turn.get("function_call") if role == ASSISTANT else None
    if calls:  # an assistant turn that calls tools (OpenAI); its text, if any, comes first
        text = [] if _missing(content) or content == "" else [{"role": ASSISTANT, "content": content}]
        if text and not isinstance(content, str):
            raise RowError(f"field '{field}.{text_key}' must be a string")
        return text + _calls(calls, f"{field}.tool_calls")
    if not isinstance(content, str):
        raise RowError(f"field '{field}.{text_key}' must be a string")
    return [{"role": role, "content": content}]


def _from_turns(turns: Any, field: str, role_key: str, text_key: str, roles: dict[str, str]) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise RowError(f"field '{field}' must be a non-empty list")
    messages = []
    for i, turn in enumerate(turns):
        messages += _turn(turn, f"{field}[{i}]", role_key, text_key, roles)
    return messages


def _from_alpaca(row: dict[str, Any]) -> list[dict[str, str]]:
    messages = []
    system = _text(row, "system", required=False)
    if system:
        messages.append({"role": SYSTEM, "content": system})
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError("field 'history' must be a list of [prompt, response] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError(f"field 'history[{i}]' must be a [prompt, response] pair of strings")
        messages += [{"role": USER, "content": pair[0]}, {"role": ASSISTANT, "content": pair[1]}]
    instruction = _text(row, "instruction", required=True)
    extra_input = _text(row, "input", required=False)
    prompt = f"{instruction}\n{extra_input}" if extra_input else instruction
    return messages + [{"role": USER, "content": prompt}, {"role": ASSISTANT, "content": _text(row, "output", True)}]


def _with_system_column(row: dict[str, Any], messages: list[dict[str, str]]) -> list[dict[str, str]]:
    # LLaMA-Factory: a system turn at the start wins over the system column.
    system = _text(row, "system", required=False)
    if system and messages[0]["role"] != SYSTEM:
        return [{"role": SYSTEM, "content": system}, *messages]
    return messages


def row_to_conversation(row: Any) -> Conversation:
    """Normalise one Alpaca / ShareGPT / OpenAI-messages row and check its turn order.

    Raises:
        TurnOrderError: the turns break one of TURN_RULES (`rule` names it).
        RowError: the row matches no known shape or a field has the wrong type.
    """
    if not isinstance(row, dict):
        raise RowError(f"a record must be a JSON object, got {type(row).__name__}")
    if "messages" in row:
        messages = _with_system_column(row, _from_turns(row["messages"], "messages", "role", "content", OPENAI_ROLES))
    elif "conversations" in row:
        turns = _from_turns(row["conversations"], "conversations", "from", "value", SHAREGPT_ROLES)
        messages = _with_system_column(row, turns)
    elif "instruction" in row or "output" in row:
        messages = _from_alpaca(row)
    else:
        raise RowError(
            f"unknown record shape with keys {sorted(map(str, row))[:8]}; expected Alpaca, ShareGPT or OpenAI messages"
        )
    check_turn_order(messages)
    return Conversation(messages, parse_tools(row.get("tools")))


def row_to_messages(row: Any) -> list[dict[str, str]]:
    """The turns of `row_to_conversation` (kept for callers that need no tools)."""
    return row_to_conversation(row).messages


def check_turn_order(messages: list[dict[str, str]]) -> None:
    """Raise TurnOrderError for the first of TURN_RULES the turns break."""
    roles = [m["role"] for m in messages]
    if SYSTEM in roles[1:]:
        raise TurnOrderError("system_turn_mid_conversation", roles.index(SYSTEM, 1))
    if USER not in roles:
        raise TurnOrderError("no_user_turn", 0)
    first = 1 if roles[0] == SYSTEM else 0
    if roles[first] in TRAINED_ROLES:
        raise TurnOrderError("starts_with_assistant", first)
    for i in range(first, len(roles)):
        previous = roles[i - 1] if i > first else None
        if roles[i] == OBSERVATION and previous not in (FUNCTION_CALL, OBSERVATION):
            raise TurnOrderError("observation_without_call", i)
        if roles[i] == previous == USER:
            raise TurnOrderError("consecutive_user_turns", i)
        if roles[i] == previous == ASSISTANT:
            raise TurnOrderError("consecutive_assistant_turns", i)
    if roles[-1] not in TRAINED_ROLES:
        raise TurnOrderError("no_response_at_end", len(roles) - 1)
