"""Which chat template a model is formatted with: its own, a named one (`sft.template`), or a Jinja file.

Names follow LLaMA-Factory's template names (`qwen`, `qwen3`, `llama3`, `chatml`, ...) so a user coming from
there can keep their setting. The Qwen templates ship as Jinja files beside this module, written out from the
`chat_template` field of the Qwen2.5 and Qwen3 tokenizers (Qwen/Qwen2.5-*-Instruct, Qwen/Qwen3-* on the hub);
the others are short layouts written here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from jinja2 import TemplateError as JinjaTemplateError
from transformers import PreTrainedTokenizerBase

TEMPLATE_DIR = Path(__file__).with_name("templates")

# Layouts for models that ship without a template (base models). Each assistant turn ends with the token
# that stops generation, so a fine-tuned model learns to stop.
_CHATML = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
_LLAMA3 = (
    "{{- bos_token }}{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
_LLAMA2 = (
    "{%- set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' %}"
    "{%- for m in messages if m['role'] != 'system' %}"
    "{%- if m['role'] in ['user', 'tool'] %}{{- bos_token + '[INST] ' }}"
    "{%- if loop.first and sys %}{{- '<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' }}{%- endif %}"
    "{{- m['content'] + ' [/INST]' }}"
    "{%- else %}{{- ' ' + m['content'] + ' ' + eos_token }}{%- endif %}{%- endfor %}"
)
_MISTRAL = (
    "{{- bos_token }}{%- set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' %}"
    "{%- for m in messages if m['role'] != 'system' %}"
    "{%- if m['role'] in ['user', 'tool'] %}"
    "{{- '[INST] ' + (sys + '\\n\\n' if loop.first and sys else '') + m['content'] + '[/INST]' }}"
    "{%- else %}{{- ' ' + m['content'] + eos_token }}{%- endif %}{%- endfor %}"
)
_DEEPSEEK3 = (
    "{{- bos_token }}{%- for m in messages %}"
    "{%- if m['role'] == 'system' %}{{- m['content'] }}"
    "{%- elif m['role'] in ['user', 'tool'] %}{{- '<｜User｜>' + m['content'] }}"
    "{%- else %}{{- '<｜Assistant｜>' + m['content'] + eos_token }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<｜Assistant｜>' }}{%- endif %}"
)


def _plain(user: str, assistant_end: str, system: str = "{{ m['content'] }}\\n\\n", gen: str = "") -> str:
    """A prompt/response layout without special tokens (for base models)."""
    return (
        "{%- for m in messages %}"
        f"{{%- if m['role'] == 'system' %}}{system}"
        f"{{%- elif m['role'] in ['user', 'tool'] %}}{user}"
        f"{{%- else %}}{{{{ m['content'] }}}}{assistant_end}{{%- endif %}}"
        "{%- endfor %}"
        f"{{%- if add_generation_prompt %}}{gen}{{%- endif %}}"
    )


@dataclass(frozen=True)
class NamedTemplate:
    jinja: str
    source: str


def _file(name: str) -> str:
    return (TEMPLATE_DIR / name).read_text(encoding="utf-8")


NAMED: dict[str, NamedTemplate] = {
    "qwen": NamedTemplate("file:qwen2_5.jinja", "Qwen2.5-Instruct tokenizer_config.json chat_template"),
    "qwen3": NamedTemplate("file:qwen3.jinja", "Qwen3 tokenizer_config.json chat_template"),
    "chatml": NamedTemplate(_CHATML, "ChatML layout (<|im_start|>role ... <|im_end|>)"),
    "yi": NamedTemplate(_CHATML, "ChatML layout, as Yi uses it"),
    "llama3": NamedTemplate(_LLAMA3, "Llama 3 header layout (<|start_header_id|> ... <|eot_id|>)"),
    "llama2": NamedTemplate(_LLAMA2, "Llama 2 [INST] layout with <<SYS>>"),
    "mistral": NamedTemplate(_MISTRAL, "Mistral [INST] layout"),
    "deepseek3": NamedTemplate(_DEEPSEEK3, "DeepSeek-V3 <｜User｜>/<｜Assistant｜> layout"),
    "alpaca": NamedTemplate(
        _plain(
            "### Instruction:\\n{{ m['content'] }}\\n\\n### Response:\\n",
            "{{ eos_token }}\\n\\n",
            gen="",
        ),
        "Alpaca instruction/response layout",
    ),
    "vicuna": NamedTemplate(_plain("USER: {{ m['content'] }} ASSISTANT: ", "{{ eos_token }}"), "Vicuna layout"),
    "default": NamedTemplate(
        _plain("Human: {{ m['content'] }}\\nAssistant: ", "{{ eos_token }}\\n", "System: {{ m['content'] }}\\n"),
        "Human/Assistant layout",
    ),
    "empty": NamedTemplate(_plain("{{ m['content'] }}", "{{ eos_token }}", "{{ m['content'] }}"), "no markup"),
}
MODEL_OWN = "model"  # the template that came with the model folder


@dataclass(frozen=True)
class TemplateInfo:
    """What the sft_dataset report and the model card say about the chat template in use."""

    name: str  # "model", a NAMED key, or the Jinja file's path
    source: str
    injected_system_prompt: str | None  # what the template adds when a conversation has no system turn
    thinking: str  # "n/a" for templates without reasoning blocks, else "non-thinking" or "thinking"

    def to_dict(self) -> dict:
        return asdict(self)


def template_text(setting: str) -> tuple[str, str, str]:
    """(name, Jinja text, source) for a `sft.template` value that is a known name or a Jinja file.

    Raises:
        ValueError: the value is neither a known name nor an existing file.
    """
    if setting in NAMED:
        named = NAMED[setting]
        jinja = _file(named.jinja.removeprefix("file:")) if named.jinja.startswith("file:") else named.jinja
        return setting, jinja, named.source
    path = Path(setting).expanduser()  # the config resolves a relative file against its own folder
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8"), f"Jinja file {path}"
    raise ValueError(
        f"sft.template is {setting!r}: not a known template name nor an existing Jinja file; "
        f"use one of {', '.join(sorted(NAMED))}, a path to a .jinja file, or '' for the model's own template"
    )


# Reasoning templates (Qwen3 and others) read `enable_thinking`; this default makes non-thinking the mode
# every caller gets (training, evaluation, the saved tokenizer) unless it passes the variable itself.
_NON_THINKING_DEFAULT = "{%- if enable_thinking is not defined %}{%- set enable_thinking = false %}{%- endif %}"


def apply_template(tokenizer: PreTrainedTokenizerBase, setting: str, enable_thinking: bool = False) -> None:
    """Put the configured chat template on the tokenizer (in place); '' keeps the model's own.

    Raises:
        ValueError: `setting` is unknown, or empty while the model has no template of its own.
    """
    if setting:
        name, jinja, source = template_text(setting)
        tokenizer.chat_template = jinja
    elif tokenizer.chat_template:
        name, source = MODEL_OWN, "the model folder's tokenizer_config.json / chat_template.jinja"
    else:
        raise ValueError(
            f"the tokenizer at {tokenizer.name_or_path} has no chat template, so conversations cannot be formatted; "
            f"set sft.template to a name ({', '.join(sorted(NAMED))}) or a Jinja file"
        )
    thinking = "n/a"
    if "enable_thinking" in tokenizer.chat_template:
        thinking = "thinking" if enable_thinking else "non-thinking"
        if not enable_thinking and _NON_THINKING_DEFAULT not in tokenizer.chat_template:
            tokenizer.chat_template = _NON_THINKING_DEFAULT + tokenizer.chat_template
    # An attribute, not init_kwargs: those are written to tokenizer_config.json on save.
    tokenizer._finetune_template = TemplateInfo(name, source, injected_system_prompt(tokenizer), thinking)


def template_info(tokenizer: PreTrainedTokenizerBase) -> TemplateInfo:
    """The template description `apply_template` recorded (the model's own if it was never called)."""
    info = getattr(tokenizer, "_finetune_template", None)
    if isinstance(info, TemplateInfo):
        return info
    return TemplateInfo(MODEL_OWN, "the model folder", injected_system_prompt(tokenizer), "n/a")


_SYSTEM, _USER = "\x00SYSTEM\x00", "\x00USER\x00"


def injected_system_prompt(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The system prompt a template inserts into a conversation that has none (None when it inserts nothing).

    Found by rendering a conversation with a sentinel system turn and one without: whatever stands where the
    sentinel stood, between the same markup, is the template's own default.
    """
    if not tokenizer.chat_template:
        return None
    user = [{"role": "user", "content": _USER}]
    try:
        with_system = tokenizer.apply_chat_template([{"role": "system", "content": _SYSTEM}, *user], tokenize=False)
        without = tokenizer.apply_chat_template(user, tokenize=False)
    except JinjaTemplateError:  # a template that refuses system turns injects none we can find
        return None
    head, sep, tail = with_system.partition(_SYSTEM)
    if not sep or _USER not in tail or not without.startswith(head) or _USER not in without:
        return None
    markup = tail[: tail.index(_USER)]  # between the system text and the user text
    before_user = without[: without.index(_USER)]
    if not before_user.endswith(markup) or len(before_user) - len(markup) < len(head):
        return None
    return before_user[len(head) : len(before_user) - len(markup)] or None


# Tokens templates close an assistant turn with; generation stops at any that the template uses.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<｜end▁of▁sentence｜>")


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS plus the end-of-turn tokens the chat template writes (a named template's end of turn may not be the
    model's EOS, e.g. `chatml` on a base model whose EOS is </s>)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN:
        if token in (tokenizer.chat_template or "") and token in vocab and vocab[token] not in ids:
            ids.append(vocab[token])
    return ids
