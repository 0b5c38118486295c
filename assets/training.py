"""Model assets: the base model and the fine-tuned adapter."""

import dagster as dg

from finetune.data.records import StageReport
from finetune.model.loading import model_hash, resolve_base_model
from finetune.train.job import training_spec
from resources import PipelineSettings, Tracker, TrainerLauncher

TRAINING = {"group_name": "training", "owners": ["team:ml"], "code_version": "1"}


@dg.asset(
    description="The base model: the embedded tiny default (built offline) or a configured path/hub id.",
    kinds={"pytorch", "safetensors"},
    **TRAINING,
)
def base_model(settings: PipelineSettings) -> dg.Output:
    cfg = settings.load()
    path = resolve_base_model(cfg)
    value = {"id": cfg.model.base, "path": path, "sha256": model_hash(path)}
    return dg.Output(
        value,
        metadata={
            "model_id": value["id"],
            "path": dg.MetadataValue.path(path),
            "sha256": value["sha256"] or "n/a (hub id)",
        },
    )


@dg.asset(
    description="The fine-tuned adapter (or model, for full/freeze/bitfit) trained on the SFT train split by the "
    "trainer launcher (a Dagster Pipes subprocess by default), as safetensors.",
    kinds={"pytorch", "safetensors"},
    **TRAINING,
)
def adapter(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    trainer_launcher: TrainerLauncher,
    tracker: Tracker,
    sft_dataset: StageReport,
    base_model: dict,
) -> dg.MaterializeResult:
    out_dir = settings.stage_dir("adapter", context.run_id)
    spec = training_spec(settings.load(), sft_dataset.files.dir, base_model["path"], out_dir, tracker.tracking())
    reported = trainer_launcher.launch(context, spec)  # the trainer's own report, relayed as it came
    return dg.MaterializeResult(value=reported.value | {"run_id": context.run_id}, metadata=reported.metadata)
