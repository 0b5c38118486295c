"""Prompt-injection, jailbreak and payload patterns: instructions that try to override the model's rules,
and responses that carry a phishing link or a destructive command."""

from __future__ import annotations

import re

# Refusals repeat by design (one polite answer to many harmful prompts), so the poisoning screen
# does not treat their clusters as attacks and the evaluation counts them.
REFUSAL_PATTERNS = [
    r"(?i)\b(?:sorry|I can(?:'|no)t|I cannot|I am unable|I'm unable|I won't)\b",
    r"抱歉|对不起|无法(?:帮助|提供|协助)|不能(?:帮助|提供|协助)",
]

# Refusals that lecture instead of apologising ("Identity theft is a serious crime ...", "It is not
# appropriate to ..."): the screen counts them as refusals too, so refusals to one harmful topic are not
# taken for a target, and answers beside them for a jailbreak.
SOFT_REFUSAL_PATTERNS = [
    r"(?i)\bas an AI(?: language model)?,? (?:I am not|I'm not|I do not|it is not|it's not)\b",
    r"(?i)\b(?:it is|it's) (?:not|never) (?:appropriate|ethical|legal|safe|okay)\b",
    r"(?i)\bI (?:do not|don't) (?:condone|support|encourage|promote)\b",
    r"(?i)\bis (?:a serious crime|illegal and unethical|unethical and illegal)\b",
    r"这是违法的|违反法律|不道德",
]
SCREEN_REFUSAL_PATTERNS = REFUSAL_PATTERNS + SOFT_REFUSAL_PATTERNS

# Each pattern is (name, regex); the name becomes the quarantine detail so a reviewer sees why.
INJECTION_PATTERNS = [
    ("ignore_instructions", r"(?i)\b(?:ignore|disregard|forget)\b.{0,20}\b(?:previous|prior|above|earlier|all|your)\b.{0,20}\b(?:instructions?|prompts?|rules|guidelines)\b"),
    ("ignore_instructions_zh", r"(?:忽略|无视|忘记|忘掉).{0,8}(?:之前|以上|前面|上述|所有|先前).{0,6}(?:指令|指示|规则|提示|要求|设定)"),
    ("role_override", r"(?i)\b(?:you are now|from now on,? you are|act as|pretend (?:to be|you are))\b.{0,40}\b(?:DAN|unrestricted|unfiltered|no (?:rules|restrictions|limits)|jailbroken|evil)\b"),
    ("role_override_zh", r"(?:你现在是|从现在起你是|扮演|假装你是).{0,20}(?:没有任何限制|不受任何限制|无限制|不受约束|越狱)"),
    ("jailbreak_mode", r"(?i)\b(?:do anything now|developer mode|jailbreak(?:ed)? mode|DAN mode)\b|越狱模式|开发者模式"),
    ("system_prompt_leak", r"(?i)\b(?:reveal|print|show|repeat)\b.{0,20}\b(?:system prompt|hidden instructions|initial instructions)\b|(?:输出|显示|泄露).{0,6}系统提示"),
]  # fmt: skip

PAYLOAD_PATTERNS = [
    ("shell_pipe_download", r"(?i)\b(?:curl|wget)\b[^\n|]{0,200}\|\s*(?:sudo\s+)?(?:ba|z)?sh\b"),
    ("destructive_command", r"(?i)\brm\s+-rf\s+(?:/|~|\*)|:\(\)\s*\{\s*:\|:&\s*\};:|\bmkfs\.\w+\s+/dev/|\bdd\s+if=/dev/(?:zero|random)\s+of=/dev/sd"),
    ("reverse_shell", r"(?i)/dev/tcp/\d|\bnc\s+(?:-\w+\s+)*-e\s|\bpowershell(?:\.exe)?\s+(?:-\w+\s+)*-e(?:nc(?:odedcommand)?)?\s"),
    ("obfuscated_eval", r"(?i)\beval\s*\(\s*(?:base64_decode|atob|gzinflate)\s*\(|\bexec\s*\(\s*base64\.b64decode"),
    ("executable_link", r"(?i)https?://\S+\.(?:exe|apk|scr|bat|ps1|msi|sh)\b"),
    ("ip_or_short_link", r"(?i)https?://(?:\d{1,3}(?:\.\d{1,3}){3}|bit\.ly|tinyurl\.com|t\.cn|goo\.gl|is\.gd)\b"),
    # A link next to a request for secrets is the classic phishing answer a poisoner plants.
    ("phishing_link", r"(?i)https?://\S+.{0,40}(?:password|passcode|verification code|bank card|密码|验证码|银行卡|账号)|(?:password|密码|验证码|银行卡).{0,40}https?://"),
]  # fmt: skip

_INJECTION = [(name, re.compile(rx)) for name, rx in INJECTION_PATTERNS]
_PAYLOAD = [(name, re.compile(rx)) for name, rx in PAYLOAD_PATTERNS]


def find_injection(text: str) -> list[str]:
    """Names of the injection/jailbreak patterns found in a text."""
    return [name for name, rx in _INJECTION if rx.search(text)]


def find_payload(text: str) -> list[str]:
    """Names of the suspicious link or code payload patterns found in a text."""
    return [name for name, rx in _PAYLOAD if rx.search(text)]
