"""Model assets: the base model and the fine-tuned adapter."""

import dagster as dg

from assets.metadata import png_markdown
from finetune.config import PROJECT_ROOT
from finetune.model.loading import model_hash, resolve_base_model
from finetune.train.job import launch_command, run_training_job, training_spec
from finetune.train.trainer import load_train_result
from resources import PipelineSettings

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
    description="The fine-tuned adapter (or model, for full/freeze/bitfit) trained on the SFT train split, in a "
    "separate process launched through Dagster Pipes (safetensors).",
    kinds={"pytorch", "safetensors"},
    **TRAINING,
)
def adapter(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    pipes_client: dg.PipesSubprocessClient,
    sft_dataset: dict,
    base_model: dict,
) -> dg.Output:
    cfg = settings.load()
    out_dir = settings.stage_dir("adapter", context.run_id)
    spec = training_spec(settings.config_path, settings.overrides, sft_dataset["dir"], base_model["path"], str(out_dir))
    if cfg.train.launcher == "in_process":
        result = run_training_job(spec, log=context.log.info)
    else:  # a separate process streaming its log through Pipes: the same seam a GPU node or k8s pod uses
        pipes_client.run(command=launch_command(cfg.train), context=context, extras=spec, cwd=str(PROJECT_ROOT))
        result = load_train_result(out_dir)
    value = result.to_dict() | {"run_id": context.run_id}
    return dg.Output(
        value,
        metadata={
            "method": result.method,
            "steps": result.steps,
            "loss_first": result.losses[0],
            "loss_last": result.losses[-1],
            "val_loss_before": result.val_loss_before,
            "val_loss_after": result.val_loss_after,
            "trainable_params": result.trainable_params,
            "tokens_per_second": result.tokens_per_second,
            "adapter_sha256": result.adapter_sha256,
            "resumed_from_step": result.extra.get("resumed_from_step", 0),
            "loss_curve": png_markdown(result.loss_curve_png, "loss curve"),
        },
    )
