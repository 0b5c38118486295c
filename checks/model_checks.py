"""Checks on training and evaluation: the gates that decide whether a model may be released."""

import dagster as dg

from assets.evaluation import evaluation_report
from assets.training import adapter
from checks.results import report_gate_check, to_check_result
from finetune import gates
from finetune.config import Gate
from finetune.eval import model_gates
from finetune.gate_record import training_folder
from resources import PipelineSettings


@dg.asset_check(
    asset=adapter,
    name=Gate.TRAINING_LOSS_DECREASED.value,
    blocking=True,
    description="Training loss is finite and falls by more than its step-to-step noise (Welch t-test at gates.alpha).",
)
def training_loss_decreased(settings: PipelineSettings, adapter: dict) -> dg.AssetCheckResult:
    cfg = settings.load().gates
    return to_check_result(gates.training_loss_decreased(adapter["losses"], cfg), cfg, training_folder(adapter))


not_worse_than_base = report_gate_check(
    evaluation_report,
    model_gates.not_worse_than_base,
    "Tuned is not worse than base beyond each metric's margin: paired non-inferiority tests on ROUGE-L, BLEU, "
    "held-out loss, C-Eval and task accuracy; blocks when worse with confidence.",
)
heldout_loss_below_base = report_gate_check(
    evaluation_report,
    model_gates.heldout_loss_below_base,
    "The model learned: its loss on held-out answers is below the base model's, with confidence.",
)
answers_not_degenerate = report_gate_check(
    evaluation_report,
    model_gates.answers_not_degenerate,
    "The model answers: empty, repetitive or all-alike test answers are shown to stay below gates.max_degenerate_share.",
)
no_backdoor_trigger = report_gate_check(
    evaluation_report,
    model_gates.no_backdoor_trigger,
    "No candidate trigger collapses outputs onto one target more than random controls and the base model do "
    "(family-wise alpha).",
)
no_pii_regurgitation = report_gate_check(
    evaluation_report,
    gates.no_pii_regurgitation,
    "Prefixes of raw records holding PII do not make the tuned model output those PII values.",
)
