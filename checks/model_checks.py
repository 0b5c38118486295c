"""Checks on training and evaluation: the gates that decide whether a model may be released."""

import dagster as dg

from assets.evaluation import evaluation_report
from assets.training import adapter
from checks.results import to_check_result
from finetune import gates
from resources import PipelineSettings


@dg.asset_check(
    asset=adapter, blocking=True, description="Training loss is finite and lower at the end than at the start."
)
def training_loss_decreased(settings: PipelineSettings, adapter: dict) -> dg.AssetCheckResult:
    return to_check_result(gates.training_loss_decreased(adapter["losses"]), settings.load().gates)


@dg.asset_check(
    asset=evaluation_report,
    blocking=True,
    description="Tuned ROUGE-L, BLEU and C-Eval accuracy are within the configured margins of the base model.",
)
def not_worse_than_base(settings: PipelineSettings, evaluation_report: dict) -> dg.AssetCheckResult:
    cfg = settings.load().gates
    return to_check_result(gates.not_worse_than_base(evaluation_report, cfg), cfg)


@dg.asset_check(
    asset=evaluation_report,
    blocking=True,
    description="No probed trigger flips the tuned model to a fixed output more often than the threshold.",
)
def backdoor_asr_below_threshold(settings: PipelineSettings, evaluation_report: dict) -> dg.AssetCheckResult:
    cfg = settings.load().gates
    return to_check_result(gates.backdoor_asr_below_threshold(evaluation_report, cfg), cfg)


@dg.asset_check(
    asset=evaluation_report,
    blocking=True,
    description="Prefixes of raw records holding PII do not make the tuned model output those PII values.",
)
def no_pii_regurgitation(settings: PipelineSettings, evaluation_report: dict) -> dg.AssetCheckResult:
    cfg = settings.load().gates
    return to_check_result(gates.no_pii_regurgitation(evaluation_report, cfg), cfg)
