"""Model assets: the base model and the fine-tuned adapter."""

from pathlib import Path

import dagster as dg

from assets.metadata import png_markdown
from finetune.data.records import read_jsonl
from finetune.model.loading import model_hash, resolve_base_model
from finetune.train.trainer import train_adapter
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
    description="LoRA/QLoRA adapter trained on the SFT train split (safetensors).",
    kinds={"pytorch", "safetensors"},
    **TRAINING,
)
def adapter(
    context: dg.AssetExecutionContext, settings: PipelineSettings, sft_dataset: dict, base_model: dict
) -> dg.Output:
    cfg = settings.load()
    split_dir = Path(sft_dataset["dir"])
    result = train_adapter(
        read_jsonl(split_dir / "train.jsonl"),
        read_jsonl(split_dir / "val.jsonl"),
        base_model["path"],
        cfg.train,
        cfg.sft,
        settings.stage_dir("adapter", context.run_id),
        cfg.model.trust_remote_code,
        log=context.log.info,
        checkpoint_root=cfg.work_dir / "checkpoints",  # shared across runs: a re-run with the same inputs resumes
    )
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
            "loss_curve": png_markdown(result.loss_curve_png, "loss curve"),
        },
    )
