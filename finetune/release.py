"""Release: copy the adapter into a release folder and write a manifest that answers the auditor's questions."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from finetune.config import PROJECT_ROOT, PipelineConfig
from finetune.data.records import sha256_file, write_json


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
    """Write `<work_dir>/releases/<id>/` with the adapter, manifest.json and MODEL_CARD.md; returns the folder.

    Raises:
        ReleaseError: the adapter is missing or a gate result is a failure (the caller must not release).
    """
    failed = [g["name"] for g in gates if not g["passed"]]
    if failed:
        raise ReleaseError(f"refusing to release: gates failed: {failed}")
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
        "checks": gates,
        "overrides": [
            {"gate": g["name"], "by": g["values"]["overridden_by"], "reason": g["values"]["override_reason"]}
            for g in gates
            if g["values"].get("overridden")
        ],
    }
    write_json(tmp / "manifest.json", manifest)
    (tmp / "MODEL_CARD.md").write_text(model_card(manifest, evaluation_md), encoding="utf-8")
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
    gates = "\n".join(
        f"| {g['name']} | {'OVERRIDDEN' if g['values'].get('overridden') else 'pass' if g['passed'] else 'FAIL'} "
        f"| {g['message']} |"
        for g in manifest["checks"]
    )
    overrides = "\n".join(f"- **{o['gate']}** overridden by {o['by']}: {o['reason']}" for o in manifest["overrides"])
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
| gate | result | detail |
|---|---|---|
{gates}

## Gate overrides
{overrides or "None: every gate passed on its own."}

## Known limitations
{
        "The embedded default base model is a tiny model built for demonstration; its scores say the pipeline works, "
        "not that the model is useful. Its C-Eval accuracy is near chance, so the forgetting guard cannot show much."
        if tiny
        else "Evaluated on the held-out split and the configured C-Eval subjects only; probes cover the lexicon, the "
        "triggers mined from this data and control tokens, not every possible trigger."
    }
PII was replaced by typed placeholders or pseudonyms before training; detection is pattern- and dictionary-based
(see the residual-PII gate above), so unusual formats can be missed.
"""


def chat_template_line(stages: list[dict[str, Any]]) -> str:
    """The model card's sentence on how records were formatted: template, injected system prompt, cutoff."""
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


def gate_results(
    cfg: PipelineConfig, stages: list[dict], train: dict, evaluation: dict, review=None
) -> list[dict[str, Any]]:
    """Every gate's verdict recomputed from the artifacts a release is built from (the expert review's only
    when review.required; an advisory review is reported in the manifest's `review` section instead)."""
    from finetune import gates as g

    by_stage = {s["stage"]: s for s in stages}
    results = [g.records_accounted(s) for s in stages]
    results += [
        g.no_residual_pii(by_stage["deidentified_records"]["residual_scan"], cfg.gates),
        g.no_trigger_hits(by_stage["screened_records"]["trigger_hits_after"], cfg.gates),
        g.poisoned_share_below_threshold(by_stage["screened_records"], cfg.gates),
        g.training_loss_decreased(train["losses"]),
        g.not_worse_than_base(evaluation, cfg.gates),
        g.backdoor_asr_below_threshold(evaluation, cfg.gates),
        g.no_pii_regurgitation(evaluation, cfg.gates),
    ]
    if review is not None and cfg.review.required:
        from finetune.review.gate import experts_prefer_tuned

        results.append(experts_prefer_tuned(review, cfg.review))
    return [g.apply_override(r, cfg.gates).to_dict() for r in results]


def release_from_artifacts(
    cfg: PipelineConfig, stages: list[dict], base_model: dict, train: dict, evaluation: dict, run_id: str, review=None
) -> Path:
    """Assemble lineage and gate results from the upstream artifacts and build the release."""
    lineage = {
        "raw_files": stages[0].get("files", []),
        "stages": [
            {
                k: s.get(k)
                for k in (
                    "stage",
                    "in",
                    "kept",
                    "dropped",
                    "quarantined",
                    "dropped_by_reason",
                    "quarantined_by_reason",
                    "chat_template",
                    "cutoff_len",
                    "truncated_share",
                    "dir",
                    "run_id",
                )
            }
            for s in stages
        ],
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
                "backdoor_max_asr": evaluation["base"]["backdoor"]["max_asr"],
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
