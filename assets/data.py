"""Data assets: raw → cleaned → deduplicated → de-identified → screened → SFT splits."""

from pathlib import Path

import dagster as dg

from assets.metadata import stage_metadata
from finetune.data.clean import clean_records
from finetune.data.dedup import deduplicate_records
from finetune.data.ingest import ingest_files
from finetune.data.pii import deidentify_records, pseudonym_salt
from finetune.data.poison import load_lexicon, screen_records
from finetune.data.records import StageResult, describe_counts, read_jsonl
from finetune.model.loading import load_tokenizer
from finetune.sft import build_sft_splits, write_sft_dataset
from resources import PipelineSettings

DATA = {"group_name": "data", "kinds": {"python", "jsonl"}, "owners": ["team:data"], "code_version": "1"}


def kept_records(report: dict) -> list[dict]:
    """The records an upstream stage kept."""
    return read_jsonl(Path(report["dir"]) / "kept.jsonl")


def stage_output(context: dg.AssetExecutionContext, settings: PipelineSettings, result: StageResult) -> dg.Output:
    report = result.write(settings.stage_dir(result.stage, context.run_id)) | {"run_id": context.run_id}
    context.log.info(describe_counts(report))
    return dg.Output(report, metadata=stage_metadata(report))


@dg.asset(description="Raw instruction records read from the configured files; unreadable rows quarantined.", **DATA)
def raw_records(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.Output:
    cfg = settings.load()
    result, files = ingest_files([cfg.resolve(p) for p in cfg.paths.raw_data])
    output = stage_output(context, settings, result)
    output.metadata["raw_files"] = dg.MetadataValue.json(files)
    return output


@dg.asset(description="Whitespace/Unicode-normalised records; empty, too short and too long ones dropped.", **DATA)
def cleaned_records(context: dg.AssetExecutionContext, settings: PipelineSettings, raw_records: dict) -> dg.Output:
    return stage_output(context, settings, clean_records(kept_records(raw_records), settings.load().clean))


@dg.asset(description="Records with exact duplicates (normalised text) removed; first occurrence kept.", **DATA)
def deduplicated_records(
    context: dg.AssetExecutionContext, settings: PipelineSettings, cleaned_records: dict
) -> dg.Output:
    return stage_output(context, settings, deduplicate_records(kept_records(cleaned_records)))


@dg.asset(description="Records with PII (phones, ID numbers, emails, cards) replaced by typed placeholders.", **DATA)
def deidentified_records(
    context: dg.AssetExecutionContext, settings: PipelineSettings, deduplicated_records: dict
) -> dg.Output:
    cfg = settings.load()
    result = deidentify_records(kept_records(deduplicated_records), cfg.pii, pseudonym_salt(cfg))
    output = stage_output(context, settings, result)
    output.metadata["replaced_by_entity"] = dg.MetadataValue.json(output.value["replaced_by_entity"])
    return output


@dg.asset(
    description="Records screened for poisoning (lexicon and mined triggers, response clusters, injection, "
    "payloads); flagged ones quarantined with the detector and a score.",
    **DATA,
)
def screened_records(
    context: dg.AssetExecutionContext, settings: PipelineSettings, deidentified_records: dict
) -> dg.Output:
    cfg = settings.load()
    lexicon = load_lexicon(cfg.screen, cfg.resolve)
    output = stage_output(context, settings, screen_records(kept_records(deidentified_records), cfg.screen, lexicon))
    for key in ("flagged_by_detector", "mined_triggers", "response_clusters"):
        output.metadata[key] = dg.MetadataValue.json(output.value[key])
    return output


@dg.asset(description="Deterministic train/val/test splits, checked to tokenize with response-only labels.", **DATA)
def sft_dataset(
    context: dg.AssetExecutionContext, settings: PipelineSettings, screened_records: dict, base_model: dict
) -> dg.Output:
    cfg = settings.load()
    tokenizer = load_tokenizer(base_model["path"], cfg.model.trust_remote_code)
    result = build_sft_splits(kept_records(screened_records), tokenizer, cfg.sft)
    report = write_sft_dataset(result, settings.stage_dir("sft_dataset", context.run_id)) | {"run_id": context.run_id}
    metadata = stage_metadata(report) | {"split_sizes": dg.MetadataValue.json(report["split_sizes"])}
    metadata["mask_preview"] = dg.MetadataValue.md(
        "Trained tokens in `[[...]]`:\n\n" + "\n\n".join(f"```\n{p}\n```" for p in report["mask_preview"])
    )
    return dg.Output(report, metadata=metadata)
