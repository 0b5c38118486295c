"""The expert review in a release: the manifest's `review` section and the model card's section with its chart."""

from __future__ import annotations

from pathlib import Path

from finetune.config import ReviewConfig
from finetune.review.gate import experts_prefer_tuned
from finetune.review.render import review_markdown
from finetune.review.stats import ReviewSummary

CARD_CHART = "expert_review.png"


def review_section(summary: ReviewSummary, cfg: ReviewConfig) -> dict:
    """The release manifest's `review` entry: whether the review gated this release, its verdict and numbers."""
    gate = experts_prefer_tuned(summary, cfg)
    mode = "blocking" if cfg.required else "advisory"
    return {
        "required": cfg.required,
        "mode": mode,
        "note": "the release waited for experts_prefer_tuned"
        if cfg.required
        else "advisory: review.required is false, so the expert review did not gate this release",
        "verdict": "pass" if gate.passed else "fail",
        "gate": gate.to_dict(),
        "packet_id": summary.packet_id,
        "key_sha256": summary.key_sha256,
        "summary": summary.to_dict(),
    }


def review_card(summary: ReviewSummary, cfg: ReviewConfig) -> tuple[str, dict[str, Path]]:
    """The model card's expert review section, and the chart file to ship beside MODEL_CARD.md."""
    gate = experts_prefer_tuned(summary, cfg)
    mode = "blocking gate" if cfg.required else "advisory: review.required is false"
    text = f"\n### Blind expert review ({mode})\n" + review_markdown(summary, gate.message)
    if not summary.chart_png:
        return text, {}
    return text + f"\n![expert review]({CARD_CHART})\n", {CARD_CHART: Path(summary.chart_png)}
