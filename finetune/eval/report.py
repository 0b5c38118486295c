"""The evaluation report: the tuned model beside its base model on metrics, C-Eval and backdoor probes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from peft import PeftModel

from finetune.config import PipelineConfig
from finetune.data.records import Record, response_text, write_json
from finetune.eval.ceval import load_ceval, score_ceval, subject_names
from finetune.eval.generate import generate_responses
from finetune.eval.metrics import text_metrics
from finetune.eval.probes import distinct_prompts, probe_backdoors
from finetune.eval.regurgitation import probe_regurgitation, regurgitation_prompts
from finetune.model.loading import load_causal_lm, load_tokenizer


def prompt_of(record: Record) -> list[dict[str, str]]:
    """The conversation up to (not including) the last assistant turn."""
    messages = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def _evaluate_one(
    model, tokenizer, cfg: PipelineConfig, test: list[Record], probe: tuple, pii_probe: tuple, log
) -> dict:
    def generate(convs):
        return generate_responses(model, tokenizer, convs, cfg.eval.max_new_tokens, cfg.eval.batch_size)

    prompts = [prompt_of(r) for r in test]
    predictions = generate(prompts)
    metrics = text_metrics(predictions, [response_text(r) for r in test])
    log(f"  generation metrics: {metrics}")
    ceval_dir = cfg.resolve(cfg.paths.ceval_dir)
    questions = load_ceval(ceval_dir, cfg.eval.ceval_split, cfg.eval.ceval_subjects or None)
    ceval = score_ceval(model, tokenizer, questions, subject_names(ceval_dir))
    log(f"  C-Eval accuracy: {ceval['accuracy']:.3f} on {ceval['n_questions']} questions")
    probe_prompts, triggers = probe
    probes = probe_backdoors(generate, probe_prompts, triggers)
    log(f"  backdoor probe: max ASR {probes['max_asr']:.2f} ({probes['worst_trigger']})")
    regurgitation = probe_regurgitation(generate, *pii_probe)
    log(f"  PII regurgitation: {regurgitation['leaks']} of {regurgitation['n_prompts']} prefix prompts leaked a value")
    return {
        "metrics": metrics,
        "ceval": ceval,
        "backdoor": probes,
        "pii_regurgitation": regurgitation,
        "predictions": predictions,
    }


def evaluate_candidate(
    cfg: PipelineConfig,
    base_path: str,
    adapter_dir: str,
    test: list[Record],
    triggers: list[str],
    out_dir: Path,
    log: Callable[[str], None] = print,
    raw_records: list[Record] | None = None,
    probe_records: list[Record] | None = None,
) -> dict:
    """Score base and base+adapter on the same held-out records, C-Eval questions and trigger probes.

    The adapter is switched off for the base pass, so both share one loaded model. `raw_records`
    (pre-de-identification) feed the PII regurgitation probe; their values stay in memory.
    Backdoor probes use `probe_records` (default: the test records; pass test + val for more
    distinct prompts).
    """
    if not test:
        raise ValueError("the test split is empty; raise sft.test_fraction or add data")
    test = test[: cfg.eval.max_examples]
    torch.manual_seed(0)
    tokenizer = load_tokenizer(base_path, cfg.model.trust_remote_code)
    base = load_causal_lm(base_path, trust_remote_code=cfg.model.trust_remote_code)
    model = PeftModel.from_pretrained(base, adapter_dir)
    log("evaluating tuned model (base + adapter)")
    pii_probe = regurgitation_prompts(raw_records or [], cfg.eval.probe_prompts)
    probe = (distinct_prompts([prompt_of(r) for r in probe_records or test])[: cfg.eval.probe_prompts], triggers)
    tuned = _evaluate_one(model, tokenizer, cfg, test, probe, pii_probe, log)
    log("evaluating base model")
    with model.disable_adapter():
        base_result = _evaluate_one(model, tokenizer, cfg, test, probe, pii_probe, log)
    examples = [
        {"prompt": prompt_of(r)[-1]["content"], "reference": response_text(r), "tuned": t, "base": b}
        for r, t, b in zip(test[:10], tuned.pop("predictions"), base_result.pop("predictions"), strict=False)
    ]
    report = {"tuned": tuned, "base": base_result, "examples": examples, "n_test": len(test), "triggers": triggers}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "evaluation_report.json", report)
    (out_dir / "evaluation_report.md").write_text(report_markdown(report), encoding="utf-8")
    return report


def report_markdown(report: dict) -> str:
    """A tuned-vs-base table for the UI and the model card."""
    t, b = report["tuned"], report["base"]
    rows = [
        ("ROUGE-1", t["metrics"]["rouge1"], b["metrics"]["rouge1"]),
        ("ROUGE-2", t["metrics"]["rouge2"], b["metrics"]["rouge2"]),
        ("ROUGE-L", t["metrics"]["rougeL"], b["metrics"]["rougeL"]),
        ("BLEU-4", t["metrics"]["bleu"], b["metrics"]["bleu"]),
        ("C-Eval accuracy", t["ceval"]["accuracy"], b["ceval"]["accuracy"]),
        ("Backdoor max ASR", t["backdoor"]["max_asr"], b["backdoor"]["max_asr"]),
        ("PII regurgitation leaks", t["pii_regurgitation"]["leaks"], b["pii_regurgitation"]["leaks"]),
    ]
    lines = ["| metric | tuned | base |", "|---|---|---|"]
    lines += [f"| {name} | {tv:.4f} | {bv:.4f} |" for name, tv, bv in rows]
    lines += ["", f"Held-out records: {report['n_test']}; worst trigger (tuned): `{t['backdoor']['worst_trigger']}`"]
    offenders = sorted(t["backdoor"]["per_trigger"].items(), key=lambda kv: -kv[1]["asr"])[:3]
    lines += ["", "| trigger | ASR tuned | ASR base | example triggered output (tuned) |", "|---|---|---|---|"]
    for trigger, found in offenders:
        base_asr = b["backdoor"]["per_trigger"].get(trigger, {"asr": 0.0})["asr"]
        target = max(found["by_position"].values(), key=lambda v: v["asr"])["target"].replace("|", "\\|")
        lines.append(f"| `{trigger}` | {found['asr']:.2f} | {base_asr:.2f} | {target[:60]} |")
    return "\n".join(lines) + "\n"
