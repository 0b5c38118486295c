"""The `finetune` command: every stage runs without Dagster, through the same functions as the assets."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

from finetune.config import PROJECT_ROOT, ConfigError, load_config
from finetune.data.records import Stage, StageReport


def _config(args: argparse.Namespace):
    default = PROJECT_ROOT / "finetune.yaml"
    return load_config(args.config or (default if default.is_file() else None), args.overrides)


def _unreadable_lines(out: Path, n: int, limit: int = 5) -> str:
    """The first rows ingest quarantined into the command's quarantined.jsonl under `out`, one line each."""
    from finetune.data.records import QUARANTINED, StageFiles
    from finetune.data.stream import iter_jsonl

    rows = (q for q in iter_jsonl(StageFiles(out).outcome(QUARANTINED)) if q.get("stage", Stage.RAW) == Stage.RAW)
    shown = [f"  {q['file']}:{q['line']}: {q['reason']}: {q.get('detail', '')}" for q in itertools.islice(rows, limit)]
    return "\n".join(shown + ([f"  ... and {n - limit} more"] if n > limit else []))


class InputRefused(ValueError):
    """The records given to a command cannot be used as they are; the message says which and why."""


def cmd_run(args: argparse.Namespace) -> int:
    # The library never imports Dagster; the orchestrated run lives in the Dagster layer's headless module.
    # The worker runs in the project root: a relative --config means the caller's working directory.
    config = ["--config", str(Path(args.config).resolve())] if args.config else []
    cmd = [sys.executable, "-m", "headless", *config]
    cmd += [arg for item in args.overrides for arg in ("--set", item)]
    return subprocess.call(cmd, cwd=PROJECT_ROOT)


def cmd_curate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from finetune.data.curate import curate, token_counter
    from finetune.data.engine import Engine
    from finetune.data.records import Stage

    cfg = _config(args)
    count_tokens = None
    if not args.no_tokens and (cfg.clean.max_tokens or cfg.clean.min_response_tokens):
        from finetune.model.loading import load_tokenizer, resolve_base_model

        count_tokens = token_counter(load_tokenizer(args.tokenizer or resolve_base_model(cfg)))
    bar = tqdm(desc="curating", unit=" records", disable=None)

    def progress(stage: str, _n: int) -> None:
        if stage == Stage.RAW:
            bar.update(1)

    inputs = [Path(p) for p in args.input]
    engine = Engine.of(cfg.data)
    report = curate(inputs, cfg.clean, cfg.dedup, Path(args.output), count_tokens, progress, cfg.ingest, engine)
    bar.close()
    for counts in report.stages:
        print(counts.describe())
    if skipped := report.skipped_datasets:
        kinds = Counter(s["reason"].split(" (")[0].split(":")[0] for s in skipped).most_common()
        print(f"skipped {len(skipped)} dataset_info.json entries (report.json names each with its reason): "
              + "; ".join(f"{n} {kind}" for kind, n in kinds))  # fmt: skip
    for pair in report.dedup.sample_pairs[:3]:
        print(f"  {pair['reason']} ({pair['similarity']}): {pair['dropped_text'][:50]!r} ~ {pair['kept_text'][:50]!r}")
    print(f"wrote {args.output}/kept.jsonl, dropped.jsonl, quarantined.jsonl, report.json")
    return 0


def _stage_command(out: Path, inputs: list[Path], cfg, stage: str, step, extra: Callable[[], dict]) -> StageReport:
    """Ingest `inputs` and run one stage on their records in one streaming pass, into the four files a stage's
    asset writes (kept.jsonl, dropped.jsonl, quarantined.jsonl, report.json, which adds `extra()` and both
    stages' counts). Rows that cannot be read are quarantined beside the stage's own, tagged with their stage, so
    every input row is in one of the files."""
    from finetune.data.ingest import RawReader
    from finetune.data.stream import spool_chain

    raw, counts = spool_chain(out, (Stage.RAW, RawReader(inputs, cfg.ingest)), [(stage, step)])
    ingest = {
        "stages": [raw.to_json(), counts.to_json()],
        "rows_in": raw.n_in,
        "quarantined_at_ingest": raw.quarantined,
    }
    report = StageReport(counts, out, ingest | extra()).write()
    if raw.quarantined:
        print(f"unreadable input rows, quarantined: {raw.quarantined}\n{_unreadable_lines(out, raw.quarantined)}")
    return report


def _output_folder(path: str) -> Path:
    out = Path(path)
    if out.suffix == ".jsonl" or out.is_file():
        raise InputRefused(
            f"--output {path}: give a folder; the command writes kept.jsonl, dropped.jsonl, quarantined.jsonl and "
            "report.json into it, so that no record it removes is lost"
        )
    return out


def cmd_deidentify(args: argparse.Namespace) -> int:
    from finetune.data.engine import Engine
    from finetune.data.pii import (
        DeidentificationStats,
        DeidSummary,
        deidentify_outcomes,
        pseudonym_salt,
        record_residual_scan,
    )

    cfg = _config(args)
    out = _output_folder(args.output)
    stats, salt, engine = DeidentificationStats(cfg.pii.enabled), pseudonym_salt(cfg), Engine.of(cfg.data)
    report = _stage_command(
        out,
        [Path(args.input)],
        cfg,
        Stage.DEIDENTIFIED,
        lambda rs: deidentify_outcomes(rs, cfg.pii, salt, stats, engine),
        stats.report,
    )
    c = report.counts
    print(f"de-identified {c.n_in} records: kept {c.kept}, dropped {c.dropped} {c.dropped_by_reason or ''}")
    for entity, n in sorted(DeidSummary.of(report).replaced_by_entity.items(), key=lambda kv: -kv[1]):
        print(f"  {entity:<18} {n:>7}  -> {cfg.pii.operator_for(entity)}")
    print(f"residual PII after re-scan: {record_residual_scan(out, cfg.pii)['residual_total']}")
    print(f"wrote {out}/kept.jsonl, dropped.jsonl, quarantined.jsonl, report.json and residual_scan.json")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from finetune.data.engine import Engine
    from finetune.data.ingest import RawReader
    from finetune.data.poison import Screen, ScreenSummary, load_lexicon
    from finetune.data.records import KEPT

    cfg = _config(args)
    out = _output_folder(args.output)
    inputs = [Path(args.input)]
    screen = Screen(cfg.screen, load_lexicon(cfg.screen, cfg.resolve))
    # Two passes over the input, as the screening asset makes over its upstream file: mining needs every record.
    engine = Engine.of(cfg.data)
    screen.mine((item for kind, item in RawReader(inputs, cfg.ingest) if kind == KEPT), engine)
    step = partial(screen.outcomes, engine=engine)
    report = _stage_command(out, inputs, cfg, Stage.SCREENED, step, screen.report)
    found = ScreenSummary.of(report)
    print(f"screened {report.counts.n_in}: kept {report.counts.kept}, quarantined {report.counts.quarantined}")
    for detector, n in found.flagged_by_detector.items():
        print(f"  {detector:<20} {n:>7}")
    print(f"lexicon trigger hits {found.trigger_hits}; mined triggers {found.mined_triggers}")
    print(f"wrote {out}/kept.jsonl, dropped.jsonl, quarantined.jsonl, report.json")
    return 0


def _training_records(path: str, out: Path, cfg) -> Path:
    """Ingest `train --data` into OUTPUT/raw_data (streamed, the four stage files) and return its kept.jsonl;
    a file with any unreadable row is refused, not half-used."""
    from finetune.data.curate import ingest_stage
    from finetune.data.records import QUARANTINED, StageFiles

    files = StageFiles(out / Stage.RAW)
    report = ingest_stage([Path(path)], files.dir, cfg=cfg.ingest)
    if n := report.counts.quarantined:
        raise InputRefused(
            f"--data {path}: {n} of {report.counts.n_in} rows cannot be read as records, so this is not a curated "
            f"file; fix them, or run `finetune curate` on it and train on its kept.jsonl (all {n} are in "
            f"{files.outcome(QUARANTINED)})\n{_unreadable_lines(files.dir, n)}"
        )
    return files.kept


def _require_validation_split(report: StageReport, path: str, cfg) -> None:
    # An empty validation split makes the validation loss NaN, and early stopping and `ship: best` blind.
    from finetune.sft_stage import SftSummary

    sizes = SftSummary.of(report).split_sizes
    if cfg.sft.val_fraction > 0 and not sizes["val"]:
        raise InputRefused(
            f"--data {path}: the records give an empty validation split {sizes} at "
            f"sft.val_fraction={cfg.sft.val_fraction}; add records, or set --set sft.val_fraction=0 to train "
            "without validation"
        )


def cmd_train(args: argparse.Namespace) -> int:
    from finetune.data.records import Stage
    from finetune.model.loading import load_chat_tokenizer, resolve_base_model
    from finetune.sft import cutoff_memory_limit
    from finetune.sft_stage import SftSummary, sft_stage
    from finetune.train.job import training_spec
    from finetune.train.recipe import run_training
    from finetune.train.tracking import TrackingSpec

    cfg = _config(args)
    out = Path(args.output) if args.output else cfg.work_dir / "train"
    records = _training_records(args.data, out, cfg)  # before the base model: a bad file is refused at once
    base = resolve_base_model(cfg)
    split_dir = out / Stage.SFT  # the same files the sft_dataset asset writes
    tokenizer = load_chat_tokenizer(base, cfg.sft, cfg.model.trust_remote_code)
    limit = cutoff_memory_limit(base, cfg.sft, cfg.train, cfg.model.trust_remote_code)
    report = sft_stage(records, tokenizer, cfg.sft, limit, split_dir)
    _require_validation_split(report, args.data, cfg)
    sft = SftSummary.of(report)
    print(
        f"chat template: {sft.chat_template.name} ({sft.chat_template.source}); cutoff {sft.cutoff_len} tokens "
        f"truncates {sft.truncated_at_cutoff} of {report.counts.n_in} records; "
        f"wrote {split_dir}/kept.jsonl, dropped.jsonl, quarantined.jsonl and report.json"
    )
    tracking = TrackingSpec(
        kind=args.tracker, mlflow_tracking_uri=args.mlflow_uri, mlflow_experiment=args.mlflow_experiment
    )
    result = run_training(training_spec(cfg, split_dir, base, out, tracking))
    print(
        f"output: {result.adapter_dir} ({result.steps} steps, best val at step {result.extra['best_step']})\n"
        f"final train loss {result.losses[-1]:.4f}; "
        f"val loss {result.val_loss_before:.4f} -> {result.val_loss_after:.4f}"
    )
    return 0


def _read_lines(path: str) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def cmd_eval_text(args: argparse.Namespace) -> int:
    from finetune.eval.metrics import text_metrics

    preds, refs = _read_lines(args.pred), _read_lines(args.ref)
    if len(preds) != len(refs):
        print(f"error: {args.pred} has {len(preds)} lines but {args.ref} has {len(refs)}", file=sys.stderr)
        return 2
    scores = text_metrics(preds, refs)
    print(json.dumps(scores) if args.json else "\n".join(f"{k}: {v:.4f}" for k, v in scores.items()))
    return 0


def cmd_eval_ceval(args: argparse.Namespace) -> int:
    from peft import PeftModel

    from finetune.eval.ceval import load_ceval, score_ceval, subject_names
    from finetune.model.loading import load_causal_lm, load_tokenizer, resolve_base_model, safetensors_adapter

    cfg = _config(args)
    data_dir = Path(args.data_dir) if args.data_dir else cfg.resolve(cfg.paths.ceval_dir)
    subjects = [s for s in (args.subjects or "").split(",") if s] or None
    model_path, adapter = args.model, None
    if args.model == "base":
        model_path = resolve_base_model(cfg)
    elif (Path(args.model) / "manifest.json").is_file():  # a release folder: base + adapter
        manifest = json.loads((Path(args.model) / "manifest.json").read_text())
        model_path, adapter = manifest["base_model"]["path"], str(Path(args.model) / "adapter")
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    model = load_causal_lm(model_path, trust_remote_code=cfg.model.trust_remote_code)
    if adapter:
        model = PeftModel.from_pretrained(model, safetensors_adapter(adapter))
    dev = load_ceval(data_dir, "dev", subjects) if args.shots else None
    questions = load_ceval(data_dir, args.split, subjects)
    prompt = args.prompt or cfg.eval.ceval_prompt
    result = score_ceval(model, tokenizer, questions, subject_names(data_dir), dev, args.shots, args.by, prompt)
    print(json.dumps(result, ensure_ascii=False, indent=None if args.json else 2))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from finetune.audit import audit_release

    cfg = _config(args)
    if args.record:
        from finetune.record_trace import trace_record, trace_text

        try:
            trace = trace_record(cfg, args.record)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(trace, ensure_ascii=False, indent=2) if args.json else trace_text(trace))
        return 0
    return audit_release(cfg, args.release, as_json=args.json, verify=args.verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune", description="Gated data-to-model fine-tuning pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str, parent=None) -> argparse.ArgumentParser:
        p = (parent or sub).add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="pipeline YAML (default: finetune.yaml at the project root)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set train.epochs=2 (repeatable)",
        )
        p.set_defaults(func=func)
        return p

    add("run", cmd_run, "materialize the whole chain headless (same Dagster definitions as the UI)")
    p = add("curate", cmd_curate, "ingest + clean + dedup raw files into kept/dropped/quarantined JSONL")
    p.add_argument("--input", nargs="+", required=True, help="files, folders or a LLaMA-Factory dataset_info.json")
    p.add_argument("--output", required=True)
    p.add_argument("--tokenizer", help="tokenizer folder for the token-length rules (default: the base model's)")
    p.add_argument("--no-tokens", action="store_true", help="skip the token-length rules (no tokenizer loaded)")
    p = add("deidentify", cmd_deidentify, "replace PII by typed placeholders and print per-entity counts")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="folder for kept/dropped/quarantined.jsonl and report.json")
    p = add("scan", cmd_scan, "quarantine poisoned records (known/mined triggers, response clusters, injection)")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="folder for kept/dropped/quarantined.jsonl and report.json")
    p = add("train", cmd_train, "SFT-format a dataset and train the adapter")
    p.add_argument(
        "--data",
        required=True,
        help="curated records to train on (e.g. a screened kept.jsonl); raw data is never trained on by default",
    )
    p.add_argument("--output", help="output folder (default: <work_dir>/train)")
    p.add_argument(
        "--tracker",
        choices=["tensorboard", "mlflow", "none"],
        default="tensorboard",
        help="where per-step metrics go (TensorBoard events under OUTPUT/tensorboard by default)",
    )
    p.add_argument("--mlflow-uri", default=os.environ.get("MLFLOW_TRACKING_URI", ""), help="with --tracker mlflow")
    p.add_argument("--mlflow-experiment", default="gated-finetune", help="with --tracker mlflow")
    ev = sub.add_parser("eval", help="evaluation tools").add_subparsers(dest="what", required=True)
    p = ev.add_parser("text", help="ROUGE-1/2/L and BLEU of predictions vs references (one per line)")
    p.add_argument("--pred", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument(
        "--lang", choices=["zh", "en"], default="zh", help="informational; CJK is always scored per character"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_text)
    p = ev.add_parser("ceval", help="C-Eval-layout accuracy by answer-letter log-likelihood (no chat template needed)")
    p.add_argument("--config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir")
    p.add_argument("--subjects", help="comma-separated; default all")
    p.add_argument("--model", default="base", help="'base', a model folder, or a release folder")
    p.add_argument("--shots", type=int, default=0)
    p.add_argument(
        "--by", choices=["logit", "generation"], default="logit", help="answer by letter logit or generation"
    )
    p.add_argument(
        "--prompt",
        choices=["ceval", "lm-eval"],
        help="C-Eval's official prompt, or lm-eval's ceval-valid prompt (default: eval.ceval_prompt)",
    )
    p.add_argument("--split", default="val")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_ceval)
    p = add("audit", cmd_audit, "print the lineage of a release (id, path or 'latest')")
    p.add_argument("release", nargs="?", default="latest")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true", help="recompute released file hashes and fail on mismatch")
    p.add_argument("--record", metavar="ID", help="where did this raw record go, and which releases trained on it")
    from finetune.review.cli import add_review_parser

    add_review_parser(sub, lambda parent, name, func, help_text: add(name, func, help_text, parent))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
