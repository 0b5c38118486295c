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
from checks.results import to_check_result
from finetune import gates
from finetune.config import Gate
from finetune.data.pii import record_residual_scan
from finetune.data.poison import kept_trigger_hits
from finetune.data.records import StageReport
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
    def _check(settings: PipelineSettings, report: StageReport) -> dg.AssetCheckResult:
        return to_check_result(gates.records_accounted(report), settings.load().gates, report.files.dir)

    return _check


accounting_checks = [accounting_check(a) for a in DATA_ASSETS]


@dg.asset_check(
    asset=deidentified_records,
    name=Gate.NO_RESIDUAL_PII.value,
    blocking=True,
    description="Independent re-scan of the de-identified records finds no PII.",
)
def no_residual_pii(settings: PipelineSettings, deidentified_records: StageReport) -> dg.AssetCheckResult:
    cfg = settings.load()
    folder = deidentified_records.files.dir
    return to_check_result(gates.no_residual_pii(record_residual_scan(folder, cfg.pii), cfg.gates), cfg.gates, folder)


@dg.asset_check(
    asset=screened_records,
    name=Gate.NO_TRIGGER_HITS.value,
    blocking=True,
    description="Independent re-scan of the screened records finds no quarantining lexicon trigger or mined trigger.",
)
def no_trigger_hits(settings: PipelineSettings, screened_records: StageReport) -> dg.AssetCheckResult:
    cfg = settings.load().gates
    hits = kept_trigger_hits(screened_records)
    return to_check_result(gates.no_trigger_hits(hits, cfg), cfg, screened_records.files.dir)


@dg.asset_check(
    asset=screened_records,
    name=Gate.POISONED_SHARE_BELOW_THRESHOLD.value,
    blocking=True,
    description="Screening quarantined no more than gates.max_poisoned_share of the records.",
)
def poisoned_share_below_threshold(settings: PipelineSettings, screened_records: StageReport) -> dg.AssetCheckResult:
    cfg = settings.load().gates
    result = gates.poisoned_share_below_threshold(screened_records, cfg)
    return to_check_result(result, cfg, screened_records.files.dir)
