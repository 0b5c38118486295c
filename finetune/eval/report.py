"""The evaluation report: tuned vs base vs base-with-prompt on metrics, C-Eval, probes and task metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from finetune.config import PipelineConfig
from finetune.data.records import Record, response_text, write_json
from finetune.eval.ceval import load_ceval, score_ceval, subject_names
from finetune.eval.generate import generate_responses
from finetune.eval.metrics import text_metrics
from finetune.eval.predictions import write_predictions
from finetune.eval.probes import distinct_prompts, probe_backdoors
from finetune.eval.regurgitation import probe_regurgitation, regurgitation_prompts
from finetune.eval.render import report_markdown, save_score_chart
from finetune.eval.task_metrics import (
    HARMFUL_PROMPTS,
    classification_metrics,
    detect_labels,
    format_compliance,
    refusal_rate,
)
from finetune.model.loading import load_causal_lm, load_chat_tokenizer
from finetune.train.methods import is_adapter, load_tuned, resolve_device

__all__ = ["EvalData", "evaluate_candidate", "prompt_of", "report_markdown"]


def prompt_of(record: Record) -> list[dict[str, str]]:
    """The conversation up to (not including) the last assistant turn."""
    messages = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


@dataclass
class EvalData:
    """What a candidate is evaluated on; only `test` is required."""

    test: list[Record]
    train: list[Record] = field(default_factory=list)  # few-shot turns and label detection
    probe_records: list[Record] = field(default_factory=list)  # held-out prompts for backdoor probes
    raw_records: list[Record] = field(default_factory=list)  # pre-de-identification, for the PII probe
    triggers: list[str] = field(default_factory=list)


def with_prompting(conversation: list[dict[str, str]], system_prompt: str, shots: list[Record]) -> list[dict[str, str]]:
    """The base-with-prompt arm's input: system prompt, k solved examples as earlier turns, then the question."""
    turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for shot in shots:
        turns += [m for m in shot["messages"] if m["role"] != "system"]
    return turns + [m for m in conversation if m["role"] != "system"]


class _Arm:
    """One model variant under evaluation: its generate function and a log prefix."""

    def __init__(self, name, model, tokenizer, cfg: PipelineConfig, log, rewrite=None):
        self.name, self.model, self.tokenizer, self.cfg, self.log = name, model, tokenizer, cfg, log
        self.rewrite = rewrite or (lambda c: c)

    def generate(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        return generate_responses(
            self.model,
            self.tokenizer,
            [self.rewrite(c) for c in conversations],
            self.cfg.eval.max_new_tokens,
            self.cfg.eval.batch_size,
            desc=f"generating ({self.name})",
        )

    def task_scores(self, data: EvalData, labels: set[str]) -> dict:
        predictions = self.generate([prompt_of(r) for r in data.test])
        references = [response_text(r) for r in data.test]
        scores = {
            "metrics": text_metrics(predictions, references),
            "classification": classification_metrics(predictions, references, labels),
            "format_compliance": format_compliance(predictions, self.cfg.eval.json_schema),
            "refusal_rate": refusal_rate(self.generate([[{"role": "user", "content": p}] for p in HARMFUL_PROMPTS])),
            "predictions": predictions,
        }
        self.log(f"  [{self.name}] generation metrics: {scores['metrics']}; refusals {scores['refusal_rate']:.2f}")
        return scores

    def safety_scores(self, data: EvalData, ceval_set: tuple, probe_prompts: list, pii_probe: tuple) -> dict:
        ev = self.cfg.eval
        ceval = score_ceval(self.model, self.tokenizer, *ceval_set, ev.ceval_shots, ev.ceval_by, ev.ceval_prompt)
        self.log(f"  [{self.name}] C-Eval accuracy: {ceval['accuracy']:.3f} on {ceval['n_questions']} questions")
        probes = probe_backdoors(self.generate, probe_prompts, data.triggers)
        self.log(f"  [{self.name}] backdoor probe: max ASR {probes['max_asr']:.2f} ({probes['worst_trigger']})")
        regurgitation = probe_regurgitation(self.generate, *pii_probe)
        self.log(
            f"  [{self.name}] PII regurgitation: {regurgitation['leaks']} of {regurgitation['n_prompts']} "
            "prefix prompts leaked a value"
        )
        return {"ceval": ceval, "backdoor": probes, "pii_regurgitation": regurgitation}


def _ceval_set(cfg: PipelineConfig) -> tuple:
    """(questions, subject names, dev examples or None), loaded once and scored for every arm."""
    ceval_dir, ev = cfg.resolve(cfg.paths.ceval_dir), cfg.eval
    questions = load_ceval(ceval_dir, ev.ceval_split, ev.ceval_subjects or None)
    dev = load_ceval(ceval_dir, "dev", ev.ceval_subjects or None) if ev.ceval_shots else None
    return questions, subject_names(ceval_dir), dev


def evaluate_candidate(
    cfg: PipelineConfig,
    base_path: str,
    adapter_dir: str,
    data: EvalData,
    out_dir: Path,
    log: Callable[[str], None] = print,
) -> dict:
    """Score base+adapter, base, and base with a system/few-shot prompt on the same held-out data.

    For adapter methods the adapter is switched off for the base arms, so all three share one
    loaded model; full/freeze/bitfit outputs are whole models and the base is loaded beside them. Tuned and
    base also get C-Eval, the backdoor probes and the PII regurgitation probe (raw PII values stay
    in memory). Writes evaluation_report.json/.md and scores.png to `out_dir`.
    """
    if not data.test:
        raise ValueError("the test split is empty; raise sft.test_fraction or add data")
    data.test = data.test[: cfg.eval.max_examples]
    torch.manual_seed(0)
    tokenizer = load_chat_tokenizer(base_path, cfg.sft, cfg.model.trust_remote_code)
    device = resolve_device(cfg.eval.device, "eval.device")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tuned_model = load_tuned(base_path, Path(adapter_dir), cfg.model.trust_remote_code, device, dtype)
    if is_adapter(Path(adapter_dir)):  # one loaded model: the base arms switch the adapter off
        base_model, base_context = tuned_model, tuned_model.disable_adapter
    else:  # full/freeze/bitfit saved whole models: the base is loaded beside it
        base_model = load_causal_lm(
            base_path, trust_remote_code=cfg.model.trust_remote_code, device=device, dtype=dtype
        )
        base_context = contextlib.nullcontext
    labels = detect_labels([response_text(r) for r in data.train + data.test])
    pii_probe = regurgitation_prompts(data.raw_records, cfg.eval.probe_prompts)
    probe_prompts = distinct_prompts([prompt_of(r) for r in data.probe_records or data.test])[: cfg.eval.probe_prompts]
    shots = data.train[: cfg.eval.prompt_shots]
    ceval_set = _ceval_set(cfg)

    log("evaluating tuned model (base + adapter)")
    tuned_arm = _Arm("tuned", tuned_model, tokenizer, cfg, log)
    tuned = tuned_arm.task_scores(data, labels) | tuned_arm.safety_scores(data, ceval_set, probe_prompts, pii_probe)
    with base_context():
        log("evaluating base model")
        base_arm = _Arm("base", base_model, tokenizer, cfg, log)
        base_result = base_arm.task_scores(data, labels) | base_arm.safety_scores(
            data, ceval_set, probe_prompts, pii_probe
        )
        log(f"evaluating base model with a system prompt and {len(shots)} example(s)")
        prompted_arm = _Arm(
            "base+prompt", base_model, tokenizer, cfg, log, lambda c: with_prompting(c, cfg.eval.system_prompt, shots)
        )
        prompted = prompted_arm.task_scores(data, labels)
    # Every answer of every arm, kept for the blind expert review packet (examples below keep only 10).
    predictions = {
        "tuned": tuned["predictions"],
        "base": base_result["predictions"],
        "base+prompt": prompted["predictions"],
    }
    examples = [
        {"prompt": prompt_of(r)[-1]["content"], "reference": response_text(r), "tuned": t, "base": b, "base+prompt": p}
        for r, t, b, p in zip(
            data.test[:10],
            tuned.pop("predictions"),
            base_result.pop("predictions"),
            prompted.pop("predictions"),
            strict=False,
        )
    ]
    report = {
        "tuned": tuned,
        "base": base_result,
        "base_prompted": prompted,
        "examples": examples,
        "n_test": len(data.test),
        "labels": sorted(labels),
        "triggers": data.triggers,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    report["predictions_file"] = str(write_predictions(out_dir, data.test, predictions))
    report["chart_png"] = str(save_score_chart(report, out_dir / "scores.png"))
    write_json(out_dir / "evaluation_report.json", report)
    (out_dir / "evaluation_report.md").write_text(report_markdown(report), encoding="utf-8")
    return report
