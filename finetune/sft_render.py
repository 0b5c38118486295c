"""Render a conversation through its chat template and find the characters of every trained turn.

The simple way (render the conversation up to each turn and take what each turn appends) assumes a template
renders a prefix of a conversation exactly as the start of the whole conversation. Reasoning templates break
that: Qwen3 prints a `<think>` block only on the turns after the last user query, so earlier answers render
differently once a later turn exists. Here each trained turn is located in the rendering of the whole
conversation (render-and-diff):

- its payload (answer text or tool call) is where the whole rendering differs from the same conversation with
  that payload replaced by a sentinel (common prefix and suffix of the two texts);
- the turn starts after the generation prompt (`add_generation_prompt=True` on the turns before it) when the
  whole rendering starts with it, trying the template's default mode first and its thinking mode second, so a
  non-thinking template's empty `<think></think>` belongs to the prompt; otherwise it starts at the payload;
- the turn ends after the markup the template closes a turn with (`<|im_end|>\n`, `<|eot_id|>`, EOS), read
  from the rendering that ends with this turn.

TRL's `assistant_only_loss` needs `{% generation %}` markers in the template; no Qwen, Llama or DeepSeek
template ships them, so this works from the rendered text alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError
from transformers import PreTrainedTokenizerBase

from finetune.model.conversation import RecordFormatError, hf_conversation, trained_turns

_SENTINEL = "\x00TRAINED\x00"


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # character ranges of trained turns, in order


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _payload_region(full: str, other: str) -> tuple[int, int]:
    """The range of `full` that differs from `other` (same text but one turn's payload replaced)."""
    start = _common_prefix(full, other)
    limit = min(len(full), len(other)) - start
    tail = _common_prefix(full[::-1], other[::-1])
    return start, len(full) - min(tail, limit)


def _with_sentinel(messages: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    turn = dict(messages[i])
    if turn.get("tool_calls"):
        turn["tool_calls"] = [{"type": "function", "function": {"name": _SENTINEL, "arguments": {}}}]
    else:
        turn["content"] = _SENTINEL
    return [*messages[:i], turn, *messages[i + 1 :]]


class _Renderer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, tools: list | None):
        self.tokenizer, self.tools = tokenizer, tools

    def __call__(self, messages: list[dict[str, Any]], generation: bool = False, **kwargs: Any) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=self.tools, tokenize=False, add_generation_prompt=generation, **kwargs
        )


def _turn_span(render: _Renderer, messages: list[dict[str, Any]], full: str, i: int, floor: int) -> tuple[int, int]:
    upto = render(messages[: i + 1])
    prompts = [render(messages[:i], True)] if i else []
    if i and "enable_thinking" in (render.tokenizer.chat_template or ""):
        prompts.append(render(messages[:i], True, enable_thinking=True))
    if full.startswith(upto):  # the turn renders the same at the end and in the middle: the simple case
        fitting = [len(p) for p in prompts if upto.startswith(p) and floor <= len(p)]
        if fitting:
            return max(fitting), len(upto)
    start, payload_end = _payload_region(full, render(_with_sentinel(messages, i)))
    _, up_end = _payload_region(upto, render(_with_sentinel(messages[: i + 1], i)))
    if start < floor:
        raise RecordFormatError(f"turn {i} could not be located in the rendered conversation")
    fitting = [len(p) for p in prompts if full.startswith(p) and floor <= len(p) <= start]
    closing = upto[up_end:]
    return (max(fitting) if fitting else start), payload_end + _common_prefix(full[payload_end:], closing)


def render_record(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], tools: list[dict[str, Any]] | None = None
) -> Rendered:
    """The rendered conversation and the character spans of its assistant and function-call turns.

    Raises:
        RecordFormatError: the template refuses the conversation, or a trained turn cannot be located.
    """
    converted, hf_tools = hf_conversation(tokenizer, messages, tools)
    render = _Renderer(tokenizer, hf_tools)
    try:
        full = render(converted)
        spans: list[tuple[int, int]] = []
        for i in trained_turns(messages, converted):
            spans.append(_turn_span(render, converted, full, i, spans[-1][1] if spans else 0))
    except JinjaTemplateError as err:
        raise RecordFormatError(f"the chat template refused the conversation: {err}") from err
    return Rendered(full, spans)
