"""Data assets: raw → cleaned → deduplicated → de-identified → screened → SFT splits."""

from dataclasses import replace
from pathlib import Path

import dagster as dg

from assets.metadata import duplicate_pairs_table, stage_metadata
from finetune.data.clean import CleanSummary
from finetune.data.curate import clean_stage, dedup_stage, ingest_stage, token_counter
from finetune.data.dedup import DedupSummary
from finetune.data.engine import Engine
from finetune.data.ingest import IngestSummary, snapshot_digest
from finetune.data.pii import DeidSummary, deidentify_stage, pseudonym_salt
from finetune.data.poison import ScreenSummary, explanations_markdown, load_lexicon, screen_stage
from finetune.data.records import Stage, StageReport
from finetune.data.stream import Progress
from finetune.model.loading import load_chat_tokenizer, load_tokenizer
from finetune.sft import cutoff_memory_limit
from finetune.sft_stage import SftSummary, sft_stage
from resources import PipelineSettings

DATA = {"group_name": "data", "kinds": {"python", "jsonl"}, "owners": ["team:data"], "code_version": "1"}


def kept_path(report: StageReport) -> Path:
    return report.files.kept


def report_output(
    context: dg.AssetExecutionContext, report: StageReport, upstream: StageReport | None = None
) -> dg.Output:
    """A stage report as the asset's output: run id and upstream count added, counts logged, metadata attached."""
    report = replace(report, run_id=context.run_id, upstream_kept=upstream.counts.kept if upstream else None)
    context.log.info(report.counts.describe())
    return dg.Output(report, metadata=stage_metadata(report))


@dg.asset(
    description="Raw instruction records read from the configured files and folders (JSONL/JSON/CSV/Parquet, "
    "Alpaca/ShareGPT/OpenAI messages with tool calls, or a LLaMA-Factory dataset_info.json); unreadable rows "
    "and files quarantined with file, line and reason.",
    **DATA,
)
def raw_records(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.Output:
    cfg = settings.load()
    out = settings.stage_dir(Stage.RAW, context.run_id)
    report = ingest_stage([cfg.resolve(p) for p in cfg.paths.raw_data], out, Progress(context.log.info), cfg.ingest)
    # The data version is the raw snapshot's id (the sensor's run key), so the UI shows which snapshot
    # every downstream asset was computed from.
    ingest = IngestSummary.of(report)
    version = snapshot_digest({f["path"]: f["sha256"] for f in ingest.files})
    output = report_output(context, replace(report, extra=report.extra | {"snapshot": version}))
    output.metadata["raw_files"] = dg.MetadataValue.json(ingest.files)
    output.metadata["snapshot"] = version
    if ingest.datasets is not None:  # a LLaMA-Factory dataset_info.json: what each entry gave, or why it was skipped
        output.metadata["datasets"] = dg.MetadataValue.json(ingest.datasets)
    return dg.Output(output.value, metadata=output.metadata, data_version=dg.DataVersion(version))


@dg.asset(
    description="Records normalised (NFKC, mojibake repair, invisible characters) and filtered by named rules: "
    "empty turns, length in characters and base-model tokens, markup, repetition, prompt echo, language.",
    **DATA,
)
def cleaned_records(
    context: dg.AssetExecutionContext, settings: PipelineSettings, raw_records: StageReport, base_model: dict
) -> dg.Output:
    cfg = settings.load()
    count_tokens = token_counter(load_tokenizer(base_model["path"], cfg.model.trust_remote_code))
    out = settings.stage_dir(Stage.CLEANED, context.run_id)
    report = clean_stage(
        kept_path(raw_records), cfg.clean, out, count_tokens, Progress(context.log.info), Engine.of(cfg.data)
    )
    output = report_output(context, report, raw_records)
    output.metadata["normalisation_fixes"] = dg.MetadataValue.json(CleanSummary.of(report).normalisation_fixes)
    return output


@dg.asset(
    description="Exact (normalised hash) and near duplicates (MinHash LSH on character shingles of prompt and "
    "response) removed; the first occurrence of each group is kept.",
    **DATA,
)
def deduplicated_records(
    context: dg.AssetExecutionContext, settings: PipelineSettings, cleaned_records: StageReport
) -> dg.Output:
    cfg = settings.load()
    out = settings.stage_dir(Stage.DEDUPLICATED, context.run_id)
    report = dedup_stage(kept_path(cleaned_records), cfg.dedup, out, Progress(context.log.info), Engine.of(cfg.data))
    output = report_output(context, report)
    output.metadata["duplicate_pairs"] = dg.MetadataValue.md(
        duplicate_pairs_table(DedupSummary.of(report).sample_pairs)
    )
    return output


@dg.asset(description="Records with PII (phones, ID numbers, emails, cards) replaced by typed placeholders.", **DATA)
def deidentified_records(
    context: dg.AssetExecutionContext, settings: PipelineSettings, deduplicated_records: StageReport
) -> dg.Output:
    cfg = settings.load()
    out = settings.stage_dir(Stage.DEIDENTIFIED, context.run_id)
    progress = Progress(context.log.info, every=2_000)
    upstream, engine = kept_path(deduplicated_records), Engine.of(cfg.data)
    report = deidentify_stage(upstream, cfg.pii, pseudonym_salt(cfg), out, progress, engine)
    output = report_output(context, report, deduplicated_records)
    output.metadata["replaced_by_entity"] = dg.MetadataValue.json(DeidSummary.of(report).replaced_by_entity)
    return output


@dg.asset(
    description="Records screened for poisoning (published-trigger lexicon, mined triggers, response clusters, "
    "injection, payloads); each quarantine names its detector, features, cluster, size and specificity.",
    **DATA,
)
def screened_records(
    context: dg.AssetExecutionContext, settings: PipelineSettings, deidentified_records: StageReport
) -> dg.Output:
    cfg = settings.load()
    lexicon = load_lexicon(cfg.screen, cfg.resolve)
    out = settings.stage_dir(Stage.SCREENED, context.run_id)
    progress, engine = Progress(context.log.info), Engine.of(cfg.data)
    report = screen_stage(kept_path(deidentified_records), cfg.screen, lexicon, out, progress, engine)
    output = report_output(context, report, deidentified_records)
    screen = ScreenSummary.of(report)
    output.metadata["flagged_by_detector"] = dg.MetadataValue.json(screen.flagged_by_detector)
    output.metadata["mined_triggers"] = dg.MetadataValue.json(screen.mined_triggers)
    output.metadata["mined_features"] = dg.MetadataValue.json(screen.mined_features)
    output.metadata["response_clusters"] = dg.MetadataValue.json(screen.response_clusters)
    output.metadata["explanations"] = dg.MetadataValue.md(explanations_markdown(screen))
    return output


@dg.asset(
    description="Deterministic train/val/test splits, checked to tokenize with response-only labels through the "
    "chat template; reports the template, the cutoff and the share of examples it truncates.",
    **DATA,
)
def sft_dataset(
    context: dg.AssetExecutionContext, settings: PipelineSettings, screened_records: StageReport, base_model: dict
) -> dg.Output:
    cfg = settings.load()
    tokenizer = load_chat_tokenizer(base_model["path"], cfg.sft, cfg.model.trust_remote_code)
    limit = cutoff_memory_limit(base_model["path"], cfg.sft, cfg.train, cfg.model.trust_remote_code)
    out = settings.stage_dir(Stage.SFT, context.run_id)
    report = sft_stage(kept_path(screened_records), tokenizer, cfg.sft, limit, out, Progress(context.log.info))
    output, sft = report_output(context, report, screened_records), SftSummary.of(report)
    output.metadata["split_sizes"] = dg.MetadataValue.json(sft.split_sizes)
    output.metadata.update(cutoff_len=sft.cutoff_len, truncated_at_cutoff=sft.truncated_at_cutoff)
    output.metadata["truncated_share"] = sft.truncated_share
    output.metadata["chat_template"] = dg.MetadataValue.json(sft.chat_template.to_dict())
    output.metadata["token_lengths"] = dg.MetadataValue.json(sft.token_lengths)
    output.metadata["mask_preview"] = dg.MetadataValue.md(
        "Trained tokens in `[[...]]`:\n\n" + "\n\n".join(f"```\n{p}\n```" for p in sft.mask_preview)
    )
    return output
