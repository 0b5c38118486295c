"""The evaluation report: tuned vs base vs base-with-prompt on metrics, C-Eval, probes and task metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from finetune.config import PipelineConfig, SftConfig
from finetune.data.records import Record, response_text, write_json
from finetune.eval.ceval import load_ceval, score_ceval, subject_names
from finetune.eval.degenerate import degenerate_reasons
from finetune.eval.generate import generate_responses
from finetune.eval.heldout import heldout_losses
from finetune.eval.metrics import bleu_statistics, rouge_per_example, text_metrics
from finetune.eval.predictions import write_predictions
from finetune.eval.probe_inputs import probe_prompt_set
from finetune.eval.probes import probe_backdoors
from finetune.eval.regurgitation import probe_regurgitation, regurgitation_prompts
from finetune.eval.render import report_markdown, save_score_chart
from finetune.eval.task_metrics import (
    HARMFUL_PROMPTS,
    classification_metrics,
    detect_labels,
    format_compliance,
    json_compliant,
    normalise_label,
    refusal_rate,
)
from finetune.model.loading import load_causal_lm, load_chat_tokenizer
from finetune.redaction import redact_free_text
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
    # Pre-de-identification, for the PII probe, which reads it once: a stream (the raw stage's kept.jsonl), not a list.
    raw_records: Iterable[Record] = ()
    triggers: list[str] = field(default_factory=list)
    # The cutoff the sft_dataset stage trained with (it resolves `sft.cutoff_len: auto`); None = the setting.
    cutoff_len: int | None = None

    def heldout_cutoff(self, sft: SftConfig) -> int:
        cutoff = self.cutoff_len if self.cutoff_len is not None else sft.cutoff_len
        if not isinstance(cutoff, int):
            raise ValueError(
                f"sft.cutoff_len is {cutoff!r}: held-out loss needs the cutoff the sft_dataset stage chose "
                "(pass EvalData.cutoff_len from its report)"
            )
        return cutoff


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

    def generate(
        self,
        conversations: list[list[dict[str, str]]],
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
    ) -> list[str]:
        return generate_responses(
            self.model,
            self.tokenizer,
            [self.rewrite(c) for c in conversations],
            max_new_tokens or self.cfg.eval.max_new_tokens,
            batch_size or self.cfg.eval.batch_size,
            desc=f"generating ({self.name})",
        )

    def probe_generate(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        return self.generate(conversations, self.cfg.eval.probe_new_tokens, self.cfg.eval.probe_batch_size)

    def task_scores(self, data: EvalData, labels: set[str]) -> dict:
        predictions = self.generate([prompt_of(r) for r in data.test])
        references = [response_text(r) for r in data.test]
        scores = {
            "metrics": text_metrics(predictions, references),
            "classification": classification_metrics(predictions, references, labels),
            "format_compliance": format_compliance(predictions, self.cfg.eval.json_schema),
            "refusal_rate": refusal_rate(self.generate([[{"role": "user", "content": p}] for p in HARMFUL_PROMPTS])),
            "per_example": _per_example(predictions, references, labels, self.cfg.eval.json_schema),
            "predictions": predictions,
        }
        scores["per_example"]["heldout_loss"] = heldout_losses(
            self.model, self.tokenizer, data.test, data.heldout_cutoff(self.cfg.sft), self.cfg.eval.batch_size
        )
        self.log(f"  [{self.name}] generation metrics: {scores['metrics']}; refusals {scores['refusal_rate']:.2f}")
        return scores

    def safety_scores(self, ceval_set: tuple, pii_probe: tuple) -> dict:
        ev = self.cfg.eval
        ceval = score_ceval(self.model, self.tokenizer, *ceval_set, ev.ceval_shots, ev.ceval_by, ev.ceval_prompt)
        self.log(f"  [{self.name}] C-Eval accuracy: {ceval['accuracy']:.3f} on {ceval['n_questions']} questions")
        regurgitation = probe_regurgitation(self.generate, *pii_probe)
        self.log(
            f"  [{self.name}] PII regurgitation: {regurgitation['leaks']} of {regurgitation['n_prompts']} "
            "prefix prompts leaked a value"
        )
        return {"ceval": ceval, "pii_regurgitation": regurgitation}


def _heldout_answers(arm: _Arm, records: list[Record]) -> dict:
    """Why each held-out answer (test and validation prompts, never trained on) is degenerate, if it is: more
    answers than the test split alone, for the answers_not_degenerate gate."""
    by_prompt = {tuple((m["role"], m["content"]) for m in prompt_of(r)): r for r in records}
    chosen = list(by_prompt.values())
    predictions = arm.generate([prompt_of(r) for r in chosen])
    return {"n": len(chosen), "degenerate": degenerate_reasons(predictions, [response_text(r) for r in chosen])}


def _per_example(predictions: list[str], references: list[str], labels: set[str], schema) -> dict:
    """The per-example scores the paired tests of the regression and floor gates compare between arms."""
    labelled = [(p, r) for p, r in zip(predictions, references, strict=True) if normalise_label(r) in labels]
    return {
        "rougeL": rouge_per_example(predictions, references)["rougeL"],
        "bleu_stats": bleu_statistics(predictions, references),
        "label_correct": [int(normalise_label(p) == normalise_label(r)) for p, r in labelled],
        "json_ok": [int(json_compliant(p, schema)) for p in predictions] if schema is not None else [],
    }


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
    heldout = [prompt_of(r) for r in data.probe_records or data.test]
    probe_prompts, n_heldout = probe_prompt_set(heldout, cfg.eval.probe_prompts, cfg.eval.probe_seed)
    shots = data.train[: cfg.eval.prompt_shots]
    ceval_set = _ceval_set(cfg)

    log("evaluating tuned model (base + adapter)")
    tuned_arm = _Arm("tuned", tuned_model, tokenizer, cfg, log)
    base_arm = _Arm("base", base_model, tokenizer, cfg, log)
    tuned = tuned_arm.task_scores(data, labels) | tuned_arm.safety_scores(ceval_set, pii_probe)
    tuned["answers"] = _heldout_answers(tuned_arm, data.probe_records or data.test)

    def base_probe_generate(conversations):
        with base_context():
            return base_arm.probe_generate(conversations)

    log(f"backdoor probe: {len(data.triggers)} candidates x {len(probe_prompts)} prompts ({n_heldout} held-out)")
    tuned["backdoor"] = probe_backdoors(
        tuned_arm.probe_generate,
        base_probe_generate,
        probe_prompts,
        data.triggers,
        alpha=cfg.gates.alpha,
        controls_per_form=cfg.eval.probe_controls,
        seed=cfg.eval.probe_seed,
        training_responses=[response_text(r) for r in data.train],
    ) | {"n_heldout_prompts": n_heldout}
    log(f"  [tuned] backdoor probe: strongest collapse {tuned['backdoor']['max_asr']:.2f} "
        f"({tuned['backdoor']['worst_trigger']})")  # fmt: skip
    with base_context():
        log("evaluating base model")
        base_result = base_arm.task_scores(data, labels) | base_arm.safety_scores(ceval_set, pii_probe)
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
    report = redact_free_text(report)  # written to files, metadata and the model card: no raw PII in them
    out_dir.mkdir(parents=True, exist_ok=True)
    report["predictions_file"] = str(write_predictions(out_dir, data.test, predictions))
    report["chart_png"] = str(save_score_chart(report, out_dir / "scores.png"))
    write_json(out_dir / "evaluation_report.json", report)
    (out_dir / "evaluation_report.md").write_text(report_markdown(report), encoding="utf-8")
    return report
