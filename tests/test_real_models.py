"""Proof on real-format models built offline (tests/real_models.py): Qwen2 + Qwen's tokenizer + Qwen2.5/Qwen3
templates, Llama + DeepSeek's tokenizer without a template, Phi3 with fused projections. Each runs masking,
every method's target selection, merge and C-Eval."""

from __future__ import annotations

import csv
import functools
import json
import logging

import pytest
import torch
from peft import IA3Config, LoraConfig, get_peft_model
from real_models import build_llama_deepseek, build_phi3, build_qwen2

from finetune.config import SftConfig, TrainConfig, load_config
from finetune.eval.ceval import (
    build_lm_eval_prompt,
    build_prompt,
    load_ceval,
    score_ceval,
    subject_info,
    subject_names,
)
from finetune.model.chat_template import template_info, template_text
from finetune.model.loading import load_causal_lm, load_chat_tokenizer, load_tokenizer
from finetune.sft import IGNORE_INDEX, mask_preview, resolve_cutoff, tokenize_conversation
from finetune.sft_stage import build_sft_splits, write_sft_dataset
from finetune.train.examples import read_split
from finetune.train.memory import estimate_memory, longest_sequence_within
from finetune.train.merge import merge_adapter
from finetune.train.methods import ADAPTER_METHODS, WEIGHT_METHODS, build_trainable_model, target_shortfalls

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SINGLE = [{"role": "user", "content": "法国的首都是哪里？"}, {"role": "assistant", "content": "巴黎。"}]
MULTI = [*SINGLE, {"role": "user", "content": "Japan?"}, {"role": "assistant", "content": "Tokyo."}]
TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
CALL = json.dumps({"name": "get_weather", "arguments": {"city": "北京"}}, ensure_ascii=False)
TOOL_TURNS = [
    {"role": "user", "content": "北京天气？"},
    {"role": "function_call", "content": CALL},
    {"role": "observation", "content": '{"temp": 3}'},
    {"role": "assistant", "content": "北京3度。"},
]


@pytest.fixture(scope="module")
def qwen2() -> str:
    return str(build_qwen2())


@pytest.fixture(scope="module")
def llama_ds() -> str:
    return str(build_llama_deepseek())


@pytest.fixture(scope="module")
def phi3() -> str:
    return str(build_phi3())


@functools.cache
def chat_tok(path: str, template: str = "", enable_thinking: bool = False):
    """One loaded tokenizer per model and template (a 150k-token tokenizer takes seconds to load)."""
    return load_chat_tokenizer(path, SftConfig(template=template, enable_thinking=enable_thinking))


def trained_text(tok, messages, tools=None) -> str:
    ex = tokenize_conversation(tok, messages, 4096, tools)
    return tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE_INDEX])


def test_qwen25_trains_answers_and_end_of_turn_and_reports_the_injected_system_prompt(qwen2):
    tok = chat_tok(qwen2)
    assert len(tok) > 150_000 and tok.tokenize("你好世界") != list("你好世界")  # the real BPE merges Chinese
    assert trained_text(tok, SINGLE) == "巴黎。<|im_end|>\n"
    assert trained_text(tok, MULTI) == "巴黎。<|im_end|>\nTokyo.<|im_end|>\n"
    info = template_info(tok)
    assert (info.name, info.injected_system_prompt, info.thinking) == ("model", QWEN_SYSTEM, "n/a")
    preview = mask_preview(tok, tokenize_conversation(tok, SINGLE, 4096))
    assert preview.startswith(f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>") and "[[巴黎。" in preview


def test_qwen3_multi_turn_renders_and_keeps_the_empty_think_block_out_of_the_loss(qwen2):
    tok = chat_tok(qwen2, "qwen3")
    whole = tok.apply_chat_template(MULTI, tokenize=False)
    first_turn = tok.apply_chat_template(MULTI[:2], tokenize=False)
    assert not whole.startswith(first_turn)  # the template renders a prefix differently: the old code raised here
    assert "<think>\n\n</think>" in whole
    assert trained_text(tok, SINGLE) == "巴黎。<|im_end|>\n"
    assert trained_text(tok, MULTI) == "巴黎。<|im_end|>\nTokyo.<|im_end|>\n"
    gen_prompt = tok.apply_chat_template(SINGLE[:1], tokenize=False, add_generation_prompt=True)
    assert gen_prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # generation matches training
    thinking = chat_tok(qwen2, "qwen3", enable_thinking=True)
    assert trained_text(thinking, MULTI) == "巴黎。<|im_end|>\n<think>\n\n</think>\n\nTokyo.<|im_end|>\n"
    assert (template_info(tok).thinking, template_info(thinking).thinking) == ("non-thinking", "thinking")


def test_qwen3_trains_a_real_reasoning_block_with_its_answer(qwen2):
    tok = chat_tok(qwen2, "qwen3")
    reasoned = [SINGLE[0], {"role": "assistant", "content": "<think>\n法国首都\n</think>\n\n巴黎。"}]
    assert trained_text(tok, reasoned) == "<think>\n法国首都\n</think>\n\n巴黎。<|im_end|>\n"


@pytest.mark.parametrize("template", ["", "qwen3"])
def test_tool_calls_render_through_the_qwen_templates_and_only_calls_and_answers_train(qwen2, template):
    tok = chat_tok(qwen2, template)
    text = tokenize_conversation(tok, TOOL_TURNS, 4096, TOOLS)
    rendered = tok.decode(text["input_ids"])
    assert "# Tools" in rendered and '"name": "get_weather"' in rendered and "<tool_response>" in rendered
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call><|im_end|>\n'
    assert trained_text(tok, TOOL_TURNS, TOOLS) == call + "北京3度。<|im_end|>\n"


def test_base_model_without_template_is_refused_for_chat_but_takes_sft_template(llama_ds):
    assert load_tokenizer(llama_ds).chat_template is None  # what C-Eval and token counting use
    with pytest.raises(ValueError, match="sft.template"):
        load_chat_tokenizer(llama_ds, SftConfig())
    tok = chat_tok(llama_ds, "deepseek3")
    assert trained_text(tok, MULTI) == "巴黎。<｜end▁of▁sentence｜>Tokyo.<｜end▁of▁sentence｜>"
    # deepseek3's layout has no tool support: the schemas go into the text and the call's JSON is trained
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tools=None, tokenize=False)
    assert "get_weather" not in rendered
    trained = trained_text(tok, TOOL_TURNS, TOOLS)
    assert trained == CALL + "<｜end▁of▁sentence｜>北京3度。<｜end▁of▁sentence｜>"
    full = tok.decode(tokenize_conversation(tok, TOOL_TURNS, 4096, TOOLS)["input_ids"])
    assert '"description": "Weather of a city"' in full


def test_phi3_template_that_appends_eos_trains_each_turn_up_to_its_end_marker(phi3):
    tok = chat_tok(phi3)
    assert trained_text(tok, MULTI) == "巴黎。<|end|>\nTokyo.<|end|>\n<|endoftext|>"


def test_unrenderable_records_are_quarantined_with_a_reason_and_the_stage_goes_on(qwen2, tmp_path):
    refusing = tmp_path / "no_system.jinja"
    refusing.write_text(
        "{%- for m in messages %}{%- if m['role'] == 'system' %}{{ raise_exception('no system turns') }}{%- endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}",
        encoding="utf-8",
    )
    cfg = load_config(None, [f"sft.template={refusing}", "sft.val_fraction=0", "sft.test_fraction=0"]).sft
    tok = load_chat_tokenizer(qwen2, cfg)
    records = [
        {"id": "ok", "source": {}, "messages": SINGLE},
        {"id": "sys", "source": {}, "messages": [{"role": "system", "content": "x"}, *SINGLE]},
        {"id": "bad-call", "source": {}, "messages": [SINGLE[0], {"role": "function_call", "content": "not json"}]},
    ]
    result = build_sft_splits(records, tok, cfg)
    assert [r["id"] for r in result.kept] == ["ok"]
    reasons = {q["record"]["id"]: (q["reason"], q["detail"]) for q in result.quarantined}
    assert reasons["sys"][0] == reasons["bad-call"][0] == "chat_template_failed"
    assert "no system turns" in reasons["sys"][1] and "not JSON" in reasons["bad-call"][1]
    assert result.extra["chat_template"]["name"] == str(refusing)


def test_cutoff_auto_takes_a_high_percentile_and_the_memory_cap(qwen2, tmp_path):
    tok = chat_tok(qwen2)
    records = [
        {"id": f"r{i}", "source": {}, "messages": [SINGLE[0], {"role": "assistant", "content": "好" * (4 * i + 1)}]}
        for i in range(20)
    ]
    cfg = SftConfig(cutoff_len="auto", cutoff_percentile=0.9, val_fraction=0, test_fraction=0)
    lengths = sorted(len(tokenize_conversation(tok, r["messages"], 4096)["input_ids"]) for r in records)
    result = build_sft_splits(records, tok, cfg)
    assert result.extra["cutoff_len"] == lengths[17] and result.extra["cutoff_limited_by"] == "percentile"
    assert result.extra["truncated_at_cutoff"] == 2 and result.extra["truncated_share"] == 0.1
    assert resolve_cutoff(lengths, cfg, memory_limit=lengths[3])[0] == lengths[3]
    assert resolve_cutoff(lengths, SftConfig(cutoff_len=64))[0] == 64
    write_sft_dataset(result, tmp_path)  # training reads the chosen cutoff from the encoded examples
    assert read_split(tmp_path, "train", tok).encoding.cutoff_len == lengths[17]


def test_memory_estimate_counts_the_logits_of_a_large_vocabulary(qwen2):
    model = load_causal_lm(qwen2)
    est = estimate_memory(model, batch_size=8, seq_len=512)
    assert est["logits_gib"] == pytest.approx(3 * 4 * 8 * 512 * model.config.vocab_size / 1024**3)
    assert est["logits_gib"] > 10 * (est["weights_gib"] + est["activations_gib"])
    n = longest_sequence_within(model.config, 8, budget_gib=1.0)
    assert 0 < n < longest_sequence_within(model.config, 8, budget_gib=2.0)
    assert estimate_memory(model, 8, n)["logits_gib"] <= 1.0 < estimate_memory(model, 8, n + 64)["logits_gib"]


def _layers_with(model, predicate) -> set[int]:
    import re

    return {
        int(m.group(1))
        for n, p in model.named_parameters()
        if predicate(n, p) and (m := re.search(r"\.layers\.(\d+)\.", n))
    }


@pytest.mark.parametrize("arch", ["qwen2", "llama_ds", "phi3"])
def test_every_method_selects_its_targets_on_every_architecture(arch, request, caplog):
    path = request.getfixturevalue(arch)
    n_layers = 2
    for method in ADAPTER_METHODS + WEIGHT_METHODS:
        with caplog.at_level(logging.WARNING, logger="finetune.train.methods"):
            model = build_trainable_model(path, TrainConfig(method=method, device="cpu", freeze_trainable_layers=1))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable, f"{arch}/{method}: nothing trains"
        if method in ("qlora", "lora", "dora", "ia3"):
            assert target_shortfalls(model, method) == [], f"{arch}/{method}"
            assert _layers_with(model, lambda n, p: p.requires_grad) == set(range(n_layers)), f"{arch}/{method}"
        if method == "ia3" and arch == "phi3":
            assert any("qkv_proj.ia3_l" in n for n in trainable) and any("down_proj.ia3_l" in n for n in trainable)
        if method == "freeze":
            assert _layers_with(model, lambda n, p: p.requires_grad) == {n_layers - 1}
        if method == "bitfit" and arch == "qwen2":  # Qwen2 has q/k/v biases; Llama and Phi3 fall back to norms
            assert trainable and all(n.endswith(".bias") for n in trainable)
    assert "target module" not in caplog.text


def test_llama_ia3_targets_on_phi3_are_reported_as_missing(phi3):
    base = load_causal_lm(phi3)
    model = get_peft_model(
        base, IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
    )
    problems = target_shortfalls(model, "ia3")
    assert len(problems) == 2 and "'k_proj' is adapted in 0 of 2" in problems[0] and "'v_proj'" in problems[1]


@pytest.mark.parametrize("arch", ["qwen2", "llama_ds", "phi3"])
def test_merge_reproduces_base_plus_adapter_on_every_architecture(arch, request, tmp_path):
    path = request.getfixturevalue(arch)
    torch.manual_seed(0)
    model = get_peft_model(load_causal_lm(path), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # a trained adapter moves the logits; a fresh one (B = 0) would not
    model.save_pretrained(tmp_path / "adapter")
    check = merge_adapter(path, tmp_path / "adapter", tmp_path / "merged")
    assert check["max_logit_change_vs_base"] > 1e-3 and check["max_logit_diff_vs_adapter"] <= 1e-4
    assert load_causal_lm(str(tmp_path / "merged")).config.model_type == load_causal_lm(path).config.model_type


OFFICIAL_MAPPING = {
    "computer_network": ["Computer Network", "计算机网络", "STEM"],
    "high_school_history": ["High School History", "高中历史", "Humanities"],
}


def _ceval_dir(tmp_path):
    rows = {
        "computer_network": [("TCP是哪一层的协议？ ", "应用层", "传输层", "网络层", "链路层", "B")] * 6,
        "high_school_history": [("秦朝建立于哪一年？", "前221年", "前206年", "前770年", "前475年", "A")] * 6,
    }
    for split in ("dev", "val"):
        (tmp_path / split).mkdir()
        for subject, qs in rows.items():
            qs = qs[:3] if split == "val" else qs
            with (tmp_path / split / f"{subject}_{split}.csv").open("w", encoding="utf-8", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["id", "question", "A", "B", "C", "D", "answer"])
                writer.writerows([i, *q] for i, q in enumerate(qs))
    (tmp_path / "subject_mapping.json").write_text(json.dumps(OFFICIAL_MAPPING, ensure_ascii=False), encoding="utf-8")
    return tmp_path


def test_ceval_prompts_read_the_official_mapping(tmp_path):
    data = _ceval_dir(tmp_path)
    names = subject_names(data)
    assert subject_info("computer_network", names["computer_network"]) == ("计算机网络", "STEM")
    assert subject_info("x", ["初中数学", "STEM"]) == ("初中数学", "STEM")
    q = load_ceval(data, "val")["computer_network"][0]
    dev = load_ceval(data, "dev")["computer_network"][:2]
    assert build_prompt(q, "计算机网络", []).startswith(
        "以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n"
    )
    body = "TCP是哪一层的协议？\nA. 应用层\nB. 传输层\nC. 网络层\nD. 链路层\n答案："
    expected = "以下是中国关于计算机网络的单项选择题，请选出其中的正确答案。\n\n" + f"{body} B\n\n{body} B\n\n{body}"
    assert build_lm_eval_prompt(q, "计算机网络", dev) == expected


@pytest.mark.parametrize("arch", ["qwen2", "llama_ds", "phi3"])
def test_ceval_scores_real_models_with_both_prompts_and_no_chat_template(arch, request, tmp_path):
    path = request.getfixturevalue(arch)
    data = _ceval_dir(tmp_path)
    tok, model = load_tokenizer(path), load_causal_lm(path)
    questions, dev = load_ceval(data, "val"), load_ceval(data, "dev")
    for prompt in ("ceval", "lm-eval"):
        result = score_ceval(model, tok, questions, subject_names(data), dev, shots=2, prompt=prompt)
        assert result["n_questions"] == 6 and result["prompt"] == prompt
        assert set(result["per_category"]) == {"STEM", "Humanities"}
        assert set(result["per_subject"]) == set(OFFICIAL_MAPPING)
    # lm-eval's choice is the argmax of log P(' X' | context), computed here by hand for one question
    q = questions["computer_network"][0]
    context = build_lm_eval_prompt(q, "计算机网络", dev["computer_network"][:2])
    scores = []
    for letter in "ABCD":
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        whole = tok(context + " " + letter, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
        scores.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole))))
    one = score_ceval(model, tok, {"computer_network": [q]}, subject_names(data), dev, shots=2, prompt="lm-eval")
    assert one["accuracy"] == float("ABCD"[max(range(4), key=scores.__getitem__)] == q.answer)


def test_cli_refuses_to_train_a_base_model_without_template_until_sft_template_names_one(llama_ds, tmp_path, capsys):
    from finetune.cli import main

    data = tmp_path / "data.jsonl"
    rows = [
        {"instruction": f"{a}加{b}等于多少？", "input": "", "output": f"{a + b}。"} for a in range(10) for b in range(4)
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    common = ["train", "--data", str(data), "--output", str(tmp_path / "out"), "--set", f"model.base={llama_ds}"]
    common += [
        "--set",
        f"paths.work_dir={tmp_path / 'work'}",
        "--set",
        "train.method=lora",
        "--set",
        "train.max_steps=2",
    ]
    common += ["--set", "train.device=cpu", "--tracker", "none", "--set", "sft.cutoff_len=auto"]
    assert main(common) == 2
    assert "sft.template" in capsys.readouterr().err
    assert main([*common, "--set", "sft.template=deepseek3"]) == 0
    out = capsys.readouterr().out
    assert "chat template: deepseek3" in out and "output:" in out
    saved = load_tokenizer(str(tmp_path / "out" / "adapter"))
    assert saved.chat_template == template_text("deepseek3")[1]  # the release carries the template it trained with


def test_cli_scores_ceval_on_a_base_model_without_template(llama_ds, tmp_path, capsys):
    from finetune.cli import main

    data = _ceval_dir(tmp_path)
    args = ["eval", "ceval", "--model", llama_ds, "--data-dir", str(data), "--prompt", "lm-eval", "--json"]
    assert main([*args, "--set", f"paths.work_dir={tmp_path / 'work'}"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["prompt"] == "lm-eval" and set(scored["per_category"]) == {"STEM", "Humanities"}
