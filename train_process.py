"""The training process the `adapter` asset launches through Dagster Pipes.

It receives the training spec as Pipes extras, streams the trainer's log lines back into the
Dagster run, and reports the result as a custom message; the asset then reads the artifact.
Launch it behind `torchrun`/`accelerate launch` with `train.launch_prefix` (see README): rank 0
talks to Dagster; the other ranks only read the spec, so the run sees one log and one result.
"""

import os

from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes

from finetune.train.job import run_training_job


def _extras_without_opening_pipes() -> dict:
    params = PipesEnvVarParamsLoader().load_context_params()
    with PipesDefaultContextLoader().load_context(params) as data:
        return dict(data["extras"])


def main() -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        run_training_job(_extras_without_opening_pipes())
        return
    with open_dagster_pipes() as pipes:
        result = run_training_job(dict(pipes.extras), log=pipes.log.info)
        pipes.report_custom_message(
            {"out_dir": str(result.adapter_dir), "steps": result.steps, "val_loss_after": result.val_loss_after}
        )


if __name__ == "__main__":
    main()
