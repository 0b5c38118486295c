"""The optional release gate on the blind expert review: blocking only when review.required is true."""

import dagster as dg

from assets.review import expert_review
from checks.results import to_check_result
from finetune.config import REVIEW_GATE
from finetune.review.gate import experts_prefer_tuned as experts_prefer_tuned_gate
from finetune.review.stats import ReviewSummary
from resources import PipelineSettings


@dg.asset_check(
    asset=expert_review,
    name=REVIEW_GATE.value,
    blocking=True,
    description="Experts prefer the tuned answers (sign test on item-level rankings) on enough items and raters; "
    "stops the release only when review.required is true, otherwise a warning.",
)
def experts_prefer_tuned(settings: PipelineSettings, expert_review: dict) -> dg.AssetCheckResult:
    cfg = settings.load()
    summary = ReviewSummary.from_dict(expert_review)
    result = to_check_result(experts_prefer_tuned_gate(summary, cfg.review), cfg.gates, None)
    # A blocking check stops downstream assets only at ERROR severity: WARN keeps an advisory review visible.
    severity = dg.AssetCheckSeverity.ERROR if cfg.review.required else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(
        passed=result.passed, description=result.description, metadata=result.metadata, severity=severity
    )
