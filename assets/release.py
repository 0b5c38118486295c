"""The release asset: exists only when every blocking gate upstream has passed."""

import dagster as dg

from finetune.release import release_from_artifacts
from finetune.review.stats import ReviewSummary
from resources import PipelineSettings


@dg.asset(
    description="Adapter + manifest.json + model card, written only when every blocking gate passed.",
    group_name="release",
    kinds={"safetensors"},
    owners=["team:ml"],
    code_version="1",
)
def release(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    raw_records: dict,
    cleaned_records: dict,
    deduplicated_records: dict,
    deidentified_records: dict,
    screened_records: dict,
    sft_dataset: dict,
    base_model: dict,
    adapter: dict,
    evaluation_report: dict,
    expert_review: ReviewSummary,  # gates the release only when review.required (its check is WARN otherwise)
) -> dg.Output:
    stages = [raw_records, cleaned_records, deduplicated_records, deidentified_records, screened_records, sft_dataset]
    path = release_from_artifacts(
        settings.load(), stages, base_model, adapter, evaluation_report, context.run_id, expert_review
    )
    context.log.info(f"release written to {path}")
    return dg.Output(
        {"path": str(path), "release_id": path.name, "manifest": str(path / "manifest.json")},
        metadata={
            "release_dir": dg.MetadataValue.path(str(path)),
            "release_id": path.name,
            "model_card": dg.MetadataValue.md((path / "MODEL_CARD.md").read_text(encoding="utf-8")),
        },
    )
