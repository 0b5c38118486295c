"""Release: copy the adapter into a release folder and write a manifest that answers the auditor's questions."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from finetune.config import PROJECT_ROOT, Gate, PipelineConfig, required_gates
from finetune.data.ingest import IngestSummary
from finetune.data.records import Stage, StageReport, sha256_file
from finetune.eval.backdoor_test import POWER
from finetune.signing import release_key, sign
from finetune.weakening import WeakenedSettingError, require_accepted

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # beside the manifest, the one file it cannot list
MODEL_CARD = "MODEL_CARD.md"


class ReleaseError(RuntimeError):
    """A release cannot be built or does not verify."""


def code_version() -> str:
    """The git commit of the project code ('unknown' outside a git checkout), '+dirty' if modified."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under a folder, keyed by relative path."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def build_release(
    cfg: PipelineConfig,
    adapter_dir: Path,
    lineage: dict[str, Any],
    gates: list[dict[str, Any]],
    evaluation_md: str,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write `<work_dir>/releases/<id>/` with the adapter, MODEL_CARD.md, manifest.json and its signature.

    The manifest lists the sha256 of every other file in the folder (`files`), the gates it was
    built under, and every weakened setting with who accepted it; `manifest.sig` signs its bytes
    with the release key (see `finetune.signing`), which stays outside the folder.

    Raises:
        ReleaseError: the adapter is missing, a gate result is a failure, or a weakened setting was not
            accepted on record (the caller must not release).
    """
    failed = [g["name"] for g in gates if not g["passed"]]
    if failed:
        raise ReleaseError(f"refusing to release: gates failed: {failed}")
    try:
        weakened = require_accepted(cfg)
    except WeakenedSettingError as err:
        raise ReleaseError(str(err)) from err
    from finetune.train.methods import is_adapter, weights_file

    try:
        weights = weights_file(adapter_dir)
    except FileNotFoundError as err:
        raise ReleaseError(f"trained weights not found: {err}") from err
    adapter_sha = sha256_file(weights)
    created = dt.datetime.now(dt.UTC)
    release_id = f"{created:%Y%m%dT%H%M%SZ}-{adapter_sha[:8]}"
    root = cfg.work_dir / "releases"
    tmp = root / f".{release_id}.tmp"
    final = root / release_id
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(adapter_dir, tmp / "adapter")
    for name, source in (extra_files or {}).items():  # e.g. the expert review chart the model card shows
        shutil.copy2(source, tmp / name)
    merged = {}
    if cfg.release.merge_model and is_adapter(adapter_dir) and cfg.train.method != "prompt_tuning":
        from finetune.train.merge import merge_adapter

        check = merge_adapter(lineage["base_model"]["path"], adapter_dir, tmp / "merged")
        merged = {"merged": {"files": file_hashes(tmp / "merged"), **check}}
    manifest = {
        "release_id": release_id,
        "created_at": created.isoformat(),
        "code_version": code_version(),
        "config_fingerprint": cfg.fingerprint(),
        "config": cfg.model_dump(exclude={"base_dir"}),
        **lineage,
        "adapter": {"sha256": adapter_sha, "files": file_hashes(tmp / "adapter")},
        **merged,
        "required_gates": required_gates(cfg),
        "checks": gates,
        "overrides": [
            {"gate": g["name"], "by": g["values"]["overridden_by"], "reason": g["values"]["override_reason"]}
            for g in gates
            if g["values"].get("overridden")
        ],
        "weakened_settings": weakened,
    }
    (tmp / MODEL_CARD).write_text(model_card(manifest, evaluation_md), encoding="utf-8")
    manifest["model_card"] = {"file": MODEL_CARD, "sha256": sha256_file(tmp / MODEL_CARD)}
    manifest["files"] = file_hashes(tmp)  # everything but the manifest and its signature, written next
    data = json.dumps(manifest, ensure_ascii=False, indent=2, default=str).encode("utf-8")
    (tmp / MANIFEST).write_bytes(data)
    key = release_key(cfg.work_dir / "secrets", create=True)
    (tmp / SIGNATURE).write_text(json.dumps(sign(data, key), indent=2), encoding="utf-8")
    os.replace(tmp, final)
    (root / "LATEST").write_text(release_id + "\n", encoding="utf-8")
    return final


def model_card(manifest: dict[str, Any], evaluation_md: str) -> str:
    """The markdown model card: data, method and hyper-parameters, metrics, gates, overrides, limitations."""
    train = manifest["config"]["train"]
    counts = "\n".join(
        f"| {s['stage']} | {s['in']} | {s['kept']} | {s['dropped']} | {s['quarantined']} |" for s in manifest["stages"]
    )
    hyper = "\n".join(f"| {k} | {v} |" for k, v in train.items())
    gates = gate_table(manifest["checks"])
    overrides = "\n".join(f"- **{o['gate']}** overridden by {o['by']}: {o['reason']}" for o in manifest["overrides"])
    weakened = manifest.get("weakened_settings", [])
    tiny = manifest["base_model"]["id"] == "embedded-tiny"
    return f"""# Release {manifest["release_id"]}

Base model: `{manifest["base_model"]["id"]}` (sha256 `{manifest["base_model"]["sha256"][:16]}…`), method
`{train["method"]}`. Code version `{manifest["code_version"]}`, config fingerprint `{manifest["config_fingerprint"]}`.

## Data
Raw files: {", ".join(f"`{Path(f['path']).name}`" for f in manifest["raw_files"])}.

| stage | in | kept | dropped | quarantined |
|---|---|---|---|---|
{counts}

## Method and hyper-parameters
{chat_template_line(manifest["stages"])}

| parameter | value |
|---|---|
{hyper}

## Evaluation (held-out split)
{evaluation_md}
## Gates
Model gates are statistical tests at family-wise level alpha = {manifest["config"]["gates"]["alpha"]} (the chance each
blocks a model that deserves to pass); intervals are two-sided {1 - 2 * manifest["config"]["gates"]["alpha"]:.0%}.
Data gates are exact counts.

{gates}

## Gate overrides
{
        overrides
        or ("None: every gate passed on its own." if not weakened else "None, but under the weakened settings below.")
    }

## Weakened settings
{weakened_settings_markdown(weakened)}

## Known limitations
{
        "The embedded default base model is a tiny model built for demonstration; its scores say the pipeline works, "
        "not that the model is useful. Its C-Eval accuracy is near chance, so the forgetting guard cannot show much."
        if tiny
        else "Evaluated on the held-out split and the configured C-Eval subjects only; the backdoor probe tests the "
        "lexicon and the triggers mined from this data against random controls, not every possible trigger."
    }
{pii_statement(manifest["config"]["pii"])}
"""


def chat_template_line(stages: list[dict[str, Any]]) -> str:
    """The model card's sentence on how records were formatted (from the manifest's stages): template, injected
    system prompt, cutoff."""
    sft = next((s for s in stages if s.get("chat_template")), None)
    if sft is None:
        return "Chat template: not recorded."
    t = sft["chat_template"]
    injected = t["injected_system_prompt"]
    system = f"it injects the system prompt {injected!r}" if injected else "it injects no system prompt"
    thinking = f", {t['thinking']} mode" if t["thinking"] != "n/a" else ""
    return (
        f"Chat template: `{t['name']}` ({t['source']}){thinking}; {system} when a record has none. "
        f"Cutoff {sft['cutoff_len']} tokens (truncates {sft['truncated_share']:.1%} of the examples)."
    )


# The figures of each statistical gate shown in the model card: (label, value key, format).
_CARD_FIGURES = {
    Gate.TRAINING_LOSS_DECREASED: [
        ("decrease", "decrease", ".4f"),
        ("t", "t", ".3g"),
        ("p", "p_value", ".2g"),
        ("detectable", "detectable_decrease", ".4f"),
    ],
    Gate.NOT_WORSE_THAN_BASE: [("verdict", "verdict", "s")],
    Gate.HELDOUT_LOSS_BELOW_BASE: [
        ("loss reduction", "reduction", "+.4f"),
        ("low", "reduction_low", "+.4f"),
        ("high", "reduction_high", "+.4f"),
        ("p", "p_value", ".2g"),
        ("detectable", "detectable_reduction", ".4f"),
    ],
    Gate.ANSWERS_NOT_DEGENERATE: [
        ("share", "share", ".2f"),
        ("high", "share_ci_high", ".2f"),
        ("p", "p_value", ".2g"),
        ("blocks from", "blocks_from_share", ".2f"),
    ],
    Gate.NO_BACKDOOR_TRIGGER: [
        ("strongest", "top_trigger", "s"),
        ("its ASR", "top_asr", ".2f"),
        ("p (Holm)", "top_p_holm", ".2g"),
        (f"ASR detected at {POWER:.0%} power", "detectable_asr", ".2f"),
    ],
}


def _figures(gate: dict[str, Any]) -> str:
    values = gate["values"]
    shown = [
        f"{label} {values[key]:{spec}}" for label, key, spec in _CARD_FIGURES.get(gate["name"], []) if key in values
    ]
    for key in [k for k in values if k.endswith("_estimate")]:  # not_worse_than_base: one entry per metric
        m = key[: -len("_estimate")]
        low, high, p = (
            values.get(f"{m}_low", float("nan")),
            values.get(f"{m}_high", float("nan")),
            values[f"{m}_p_worse"],
        )
        shown.append(f"{m} {values[key]:+.3g} [{low:+.3g}, {high:+.3g}] p_worse {p:.2g}")
    for key in ("n", "prompts", "alpha"):
        if key in values:
            shown.append(f"{key} {values[key]}")
    return ", ".join(shown)


def gate_table(checks: list[dict[str, Any]]) -> str:
    """The model card's gate table: result, the test and its reference, the figures, the full message."""
    rows = ["| gate | result | test | figures | detail |", "|---|---|---|---|---|"]
    for g in checks:
        result = "OVERRIDDEN" if g["values"].get("overridden") else "FAIL" if not g["passed"] else "pass"
        result = "pass (WARN)" if result == "pass" and g.get("warn") else result
        cells = [g["name"], result, g.get("method", ""), _figures(g), g["message"]]
        rows.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(rows)


def weakened_settings_markdown(weakened: list[dict[str, Any]]) -> str:
    """One line per setting weaker than shipped, with who accepted it and why."""
    if not weakened:
        return "None: every gate-protecting setting is at least as strict as shipped."
    return "\n".join(f"- `{w['description']}`, accepted by {w['by']}: {w['reason']}" for w in weakened)


def pii_statement(pii: dict[str, Any]) -> str:
    """What de-identification did to the training data, from the config the release was built with."""
    if not pii["enabled"]:
        return (
            "PII de-identification was OFF for this run (see Weakened settings): the training data was not "
            "de-identified and may hold personal data."
        )
    from finetune.config import PII_ENTITIES

    skipped = sorted(set(PII_ENTITIES) - set(pii["entities"]))
    text = (
        "PII was replaced by typed placeholders or pseudonyms before training; detection is pattern- and "
        "dictionary-based (see the residual-PII gate above), so unusual formats can be missed."
    )
    return text + (f" Not de-identified (removed from pii.entities): {', '.join(skipped)}." if skipped else "")


def gate_results(
    cfg: PipelineConfig, stages: list[StageReport], train: dict, evaluation: dict, review=None
) -> list[dict[str, Any]]:
    """Every gate's verdict on the artifacts a release is built from (the expert review's only when
    review.required; an advisory review is reported in the manifest's `review` section instead).

    Each verdict is the one its Dagster check recorded beside the artifact (`gate_record`), computed here only
    when no check recorded one under these gate settings; the expert review is decided here, from the
    judgements given.
    """
    from finetune import gates as g
    from finetune.data.pii import recorded_residual_scan
    from finetune.data.poison import kept_trigger_hits
    from finetune.data.records import Stage
    from finetune.eval import model_gates as mg
    from finetune.gate_record import evaluate_gate, training_folder

    gates = cfg.gates
    by_stage = {s.stage: s for s in stages}
    deidentified, screened = by_stage[Stage.DEIDENTIFIED].files.dir, by_stage[Stage.SCREENED]
    screened_dir = screened.files.dir
    results = [
        evaluate_gate(s.files.dir, Gate.RECORDS_ACCOUNTED, gates, partial(g.records_accounted, s)) for s in stages
    ]
    results += [
        evaluate_gate(
            deidentified,
            Gate.NO_RESIDUAL_PII,
            gates,
            lambda: g.no_residual_pii(recorded_residual_scan(deidentified, cfg.pii), gates),
        ),
        evaluate_gate(
            screened_dir, Gate.NO_TRIGGER_HITS, gates, lambda: g.no_trigger_hits(kept_trigger_hits(screened), gates)
        ),
        evaluate_gate(
            screened_dir,
            Gate.POISONED_SHARE_BELOW_THRESHOLD,
            gates,
            partial(g.poisoned_share_below_threshold, screened, gates),
        ),
        evaluate_gate(
            training_folder(train),
            Gate.TRAINING_LOSS_DECREASED,
            gates,
            partial(g.training_loss_decreased, train["losses"], gates),
        ),
    ]
    model_gates = (
        mg.not_worse_than_base,
        mg.heldout_loss_below_base,
        mg.answers_not_degenerate,
        mg.no_backdoor_trigger,
        g.no_pii_regurgitation,
    )
    results += [
        evaluate_gate(Path(evaluation["dir"]), Gate(gate.__name__), gates, partial(gate, evaluation, gates))
        for gate in model_gates
    ]
    if review is not None and cfg.review.required:
        from finetune.review.gate import experts_prefer_tuned

        results.append(experts_prefer_tuned(review, cfg.review))
    return [g.apply_override(r, cfg.gates).to_dict() for r in results]


def _stage_lineage(report: StageReport) -> dict[str, Any]:
    """A stage's row of the manifest: its counts and folder, and for the SFT split how records were formatted."""
    from finetune.sft_stage import SftSummary  # torch and transformers: only a release needs them here

    formatting = dict.fromkeys(("chat_template", "cutoff_len", "truncated_share"))
    if report.stage == Stage.SFT:
        sft = SftSummary.of(report)
        formatting = {
            "chat_template": asdict(sft.chat_template),
            "cutoff_len": sft.cutoff_len,
            "truncated_share": sft.truncated_share,
        }
    return report.counts.to_json() | formatting | {"dir": str(report.files.dir), "run_id": report.run_id}


def release_from_artifacts(
    cfg: PipelineConfig,
    stages: list[StageReport],
    base_model: dict,
    train: dict,
    evaluation: dict,
    run_id: str,
    review=None,
) -> Path:
    """Assemble lineage and gate results from the upstream artifacts and build the release."""
    lineage = {
        "raw_files": IngestSummary.of(stages[0]).files,
        "stages": [_stage_lineage(s) for s in stages],
        "base_model": base_model,
        "training": {
            k: train[k] for k in ("method", "steps", "val_loss_before", "val_loss_after", "trainable_params", "run_id")
        }
        | {"loss_first": train["losses"][0], "loss_last": train["losses"][-1]},
        "evaluation": {
            "dir": evaluation["dir"],
            "tuned": {
                "metrics": evaluation["tuned"]["metrics"],
                "ceval": evaluation["tuned"]["ceval"]["accuracy"],
                "backdoor_max_asr": evaluation["tuned"]["backdoor"]["max_asr"],
            },
            "base": {
                "metrics": evaluation["base"]["metrics"],
                "ceval": evaluation["base"]["ceval"]["accuracy"],
            },
        },
        "dagster_run_id": run_id,
    }
    from finetune.eval.report import report_markdown

    evaluation_md, extra_files = report_markdown(evaluation), {}
    if review is not None:  # the blind expert review (finetune.review.stats.ReviewSummary)
        from finetune.review.card import review_card, review_section

        lineage["review"] = review_section(review, cfg.review)
        review_md, extra_files = review_card(review, cfg.review)
        evaluation_md += review_md
    return build_release(
        cfg,
        Path(train["adapter_dir"]),
        lineage,
        gate_results(cfg, stages, train, evaluation, review),
        evaluation_md,
        extra_files,
    )
