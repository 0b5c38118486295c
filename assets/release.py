"""The release asset: exists only when every blocking gate upstream has passed."""

import dagster as dg

from finetune.data.records import StageReport, sha256_file
from finetune.release import MANIFEST, release_from_artifacts
from finetune.review.stats import ReviewSummary
from release_ledger import MANIFEST_SHA256
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
    raw_records: StageReport,
    cleaned_records: StageReport,
    deduplicated_records: StageReport,
    deidentified_records: StageReport,
    screened_records: StageReport,
    sft_dataset: StageReport,
    base_model: dict,
    adapter: dict,
    evaluation_report: dict,
    expert_review: dict,  # gates the release only when review.required (its check is WARN otherwise)
) -> dg.Output:
    stages = [raw_records, cleaned_records, deduplicated_records, deidentified_records, screened_records, sft_dataset]
    path = release_from_artifacts(
        settings.load(),
        stages,
        base_model,
        adapter,
        evaluation_report,
        context.run_id,
        ReviewSummary.from_dict(expert_review),
    )
    context.log.info(f"release written to {path}")
    return dg.Output(
        {"path": str(path), "release_id": path.name, "manifest": str(path / MANIFEST)},
        metadata={
            "release_dir": dg.MetadataValue.path(str(path)),
            "release_id": path.name,
            # Recorded outside the release folder: `finetune audit --verify` compares the manifest with it.
            MANIFEST_SHA256: sha256_file(path / MANIFEST),
            "model_card": dg.MetadataValue.md((path / "MODEL_CARD.md").read_text(encoding="utf-8")),
        },
    )
