"""The training process the `adapter` asset launches through Dagster Pipes.

It reads the `TrainingSpec` from the Pipes extras, streams the trainer's log lines back into the
Dagster run, and reports the materialization (losses, memory, tokens/s, loss curve, result paths)
through `open_dagster_pipes`; the asset relays that report. Behind torchrun or accelerate launch,
rank 0 talks to Dagster and the other ranks only read the spec, so the run sees one log and one result.
"""

from __future__ import annotations

import os

from dagster_pipes import PipesContext, PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes

from finetune.train.launch import die_with_parent

SPEC_EXTRA = "training_spec"


def pipes_extras(spec) -> dict:
    """The Pipes extras that carry a TrainingSpec to this process (JSON, validated again on arrival)."""
    return {SPEC_EXTRA: spec.model_dump(mode="json")}


def report_training(pipes: PipesContext) -> None:
    """Train the spec in `pipes`' extras and report the materialization back through it."""
    from finetune.train.job import TrainingSpec, result_metadata
    from finetune.train.recipe import run_training

    result = run_training(TrainingSpec.model_validate(pipes.extras[SPEC_EXTRA]), log=pipes.log.info)
    pipes.report_asset_materialization(metadata=result_metadata(result))


def _train_without_pipes() -> None:
    from finetune.train.job import TrainingSpec
    from finetune.train.recipe import run_training

    params = PipesEnvVarParamsLoader().load_context_params()
    with PipesDefaultContextLoader().load_context(params) as data:
        spec = TrainingSpec.model_validate(data["extras"][SPEC_EXTRA])
    run_training(spec)


def main() -> None:
    die_with_parent()  # first, before the seconds torch takes to import
    if int(os.environ.get("RANK", "0")) != 0:
        _train_without_pipes()
        return
    with open_dagster_pipes() as pipes:
        report_training(pipes)


if __name__ == "__main__":
    main()
