"""Checks on the data stages: accounting, residual PII and residual triggers."""

import dagster as dg

from assets.data import (
    cleaned_records,
    deduplicated_records,
    deidentified_records,
    raw_records,
    screened_records,
    sft_dataset,
)
from checks.results import report_gate_check, to_check_result
from finetune import gates
from finetune.config import Gate
from finetune.data.pii import record_residual_scan
from finetune.data.poison import count_trigger_hits
from finetune.data.records import StageFiles, read_jsonl
from resources import PipelineSettings

DATA_ASSETS = [raw_records, cleaned_records, deduplicated_records, deidentified_records, screened_records, sft_dataset]


def accounting_check(asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """A blocking check that in = kept + dropped + quarantined for one data asset."""

    @dg.asset_check(
        asset=asset,
        name=Gate.RECORDS_ACCOUNTED.value,
        blocking=True,
        description="Every record is kept, dropped with a reason, or quarantined: in = kept + dropped + quarantined.",
    )
    def _check(settings: PipelineSettings, report: dict) -> dg.AssetCheckResult:
        return to_check_result(gates.records_accounted(report), settings.load().gates)

    return _check


accounting_checks = [accounting_check(a) for a in DATA_ASSETS]


@dg.asset_check(
    asset=deidentified_records,
    name=Gate.NO_RESIDUAL_PII.value,
    blocking=True,
    description="Independent re-scan of the de-identified records finds no PII.",
)
def no_residual_pii(settings: PipelineSettings, deidentified_records: dict) -> dg.AssetCheckResult:
    cfg = settings.load()
    scan = record_residual_scan(StageFiles.of(deidentified_records).dir, cfg.pii)
    return to_check_result(gates.no_residual_pii(scan, cfg.gates), cfg.gates)


@dg.asset_check(
    asset=screened_records,
    name=Gate.NO_TRIGGER_HITS.value,
    blocking=True,
    description="Independent re-scan of the screened records finds no quarantining lexicon trigger or mined trigger.",
)
def no_trigger_hits(settings: PipelineSettings, screened_records: dict) -> dg.AssetCheckResult:
    kept = read_jsonl(StageFiles.of(screened_records).kept)
    # screen_triggers, not probe_triggers: the probes also try ordinary words published attacks combine
    # (2024, OpenAI), which clean records may carry.
    hits = count_trigger_hits(kept, screened_records["screen_triggers"])
    cfg = settings.load().gates
    return to_check_result(gates.no_trigger_hits(hits, cfg), cfg)


poisoned_share_below_threshold = report_gate_check(
    screened_records,
    gates.poisoned_share_below_threshold,
    "Screening quarantined no more than gates.max_poisoned_share of the records.",
)
