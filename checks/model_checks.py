"""Checks on training and evaluation: the gates that decide whether a model may be released."""

import dagster as dg

from assets.evaluation import evaluation_report
from assets.training import adapter
from checks.results import report_gate_check, to_check_result
from finetune import gates
from resources import PipelineSettings


@dg.asset_check(
    asset=adapter, blocking=True, description="Training loss is finite and lower at the end than at the start."
)
def training_loss_decreased(settings: PipelineSettings, adapter: dict) -> dg.AssetCheckResult:
    return to_check_result(gates.training_loss_decreased(adapter["losses"]), settings.load().gates)


not_worse_than_base = report_gate_check(
    evaluation_report,
    gates.not_worse_than_base,
    "Tuned ROUGE-L, BLEU and C-Eval accuracy are within the configured margins of the base model.",
)
backdoor_asr_below_threshold = report_gate_check(
    evaluation_report,
    gates.backdoor_asr_below_threshold,
    "No probed trigger flips the tuned model to a fixed output more often than the threshold.",
)
no_pii_regurgitation = report_gate_check(
    evaluation_report,
    gates.no_pii_regurgitation,
    "Prefixes of raw records holding PII do not make the tuned model output those PII values.",
)
