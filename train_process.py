"""The training process the `adapter` asset launches through Dagster Pipes.

It receives the training spec as Pipes extras, streams the trainer's log lines back into the
Dagster run, and reports the result as a custom message; the asset then reads the artifact.
Launch it behind `torchrun`/`accelerate launch` with `train.launch_prefix` (see README).
"""

from dagster_pipes import open_dagster_pipes

from finetune.train.job import run_training_job


def main() -> None:
    with open_dagster_pipes() as pipes:
        result = run_training_job(dict(pipes.extras), log=pipes.log.info)
        pipes.report_custom_message(
            {"out_dir": str(result.adapter_dir), "steps": result.steps, "val_loss_after": result.val_loss_after}
        )


if __name__ == "__main__":
    main()
