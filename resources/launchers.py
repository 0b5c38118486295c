"""How the `adapter` asset starts the trainer: in its own process, as a Pipes subprocess, or behind torchrun /
accelerate launch. Each returns the materialization the trainer reported (metadata and the TrainResult).

Launch settings are typed fields, never a command line: only the known launchers run, with checked values.
"""

import os
from abc import ABC, abstractmethod

import dagster as dg
from pydantic import Field

from finetune.config import PROJECT_ROOT
from finetune.train.job import RESULT_ENTRY, TrainingSpec
from finetune.train.launch import accelerate_command, child_env, python_command, torchrun_command
from resources.pipes_messages import WholeLineMessageReader
from train_process import pipes_extras

LAUNCHER_ENV = "FINETUNE_LAUNCHER"
NPROC_ENV = "FINETUNE_NPROC_PER_NODE"


class TrainerLauncher(dg.ConfigurableResource, ABC):
    """Runs one training job for the adapter asset."""

    @abstractmethod
    def launch(self, context: dg.AssetExecutionContext, spec: TrainingSpec) -> dg.MaterializeResult:
        """Train `spec`; the result's value is the TrainResult as a dict, its metadata what the trainer reported."""


def _with_value(reported: dg.MaterializeResult) -> dg.MaterializeResult:
    metadata = dict(reported.metadata or {})
    if RESULT_ENTRY not in metadata:
        raise RuntimeError(
            f"the trainer finished without reporting its {RESULT_ENTRY!r} (reported: {sorted(metadata) or 'nothing'}): "
            "its Pipes report was lost or it exited before reporting; the trainer's own log lines above say which"
        )
    return dg.MaterializeResult(value=metadata[RESULT_ENTRY].value, metadata=metadata)


class InProcessLauncher(TrainerLauncher):
    """Train inside the asset's own process (no Pipes subprocess; the quickest for tests and notebooks)."""

    def launch(self, context: dg.AssetExecutionContext, spec: TrainingSpec) -> dg.MaterializeResult:
        from finetune.train.job import result_metadata
        from finetune.train.recipe import run_training

        reported = result_metadata(run_training(spec, log=context.log.info))
        return _with_value(dg.MaterializeResult(metadata={k: _metadata_value(v) for k, v in reported.items()}))


_METADATA_TYPES = {
    "text": dg.MetadataValue.text,
    "int": dg.MetadataValue.int,
    "float": dg.MetadataValue.float,
    "path": dg.MetadataValue.path,
    "md": dg.MetadataValue.md,
    "json": dg.MetadataValue.json,
}


def _metadata_value(entry: dict) -> dg.MetadataValue:
    return _METADATA_TYPES[entry["type"]](entry["raw_value"])


class SubprocessLauncher(TrainerLauncher):
    """Train in a separate process through Dagster Pipes: the seam a GPU node or a k8s pod uses."""

    def command(self) -> list[str]:
        return python_command()

    def launch(self, context: dg.AssetExecutionContext, spec: TrainingSpec) -> dg.MaterializeResult:
        client = dg.PipesSubprocessClient(
            cwd=str(PROJECT_ROOT), env=child_env(), message_reader=WholeLineMessageReader()
        )
        invocation = client.run(command=self.command(), context=context, extras=pipes_extras(spec))
        return _with_value(invocation.get_materialize_result())


class TorchrunLauncher(SubprocessLauncher):
    """Data-parallel training: `torchrun` starts `nproc_per_node` ranks (NCCL on GPUs, Gloo on CPU)."""

    nproc_per_node: int = Field(default=2, ge=1, le=1024, description="Ranks per machine (one per GPU).")
    nnodes: int = Field(default=1, ge=1, le=1024, description="Machines; more than 1 needs rdzv_endpoint.")
    node_rank: int = Field(default=0, ge=0, description="This machine's index when nnodes > 1.")
    rdzv_endpoint: str = Field(default="", description="host:port where the machines meet (nnodes > 1).")

    def command(self) -> list[str]:
        return torchrun_command(self.nproc_per_node, self.nnodes, self.node_rank, self.rdzv_endpoint)


class AccelerateLauncher(SubprocessLauncher):
    """Data-parallel training started by `accelerate launch` with `num_processes` processes on this machine."""

    num_processes: int = Field(default=2, ge=1, le=1024, description="Processes (one per GPU).")

    def command(self) -> list[str]:
        return accelerate_command(self.num_processes)


def launcher_from_env() -> TrainerLauncher:
    """The launcher named by $FINETUNE_LAUNCHER (default subprocess); ranks from $FINETUNE_NPROC_PER_NODE."""
    name = os.environ.get(LAUNCHER_ENV, "subprocess")
    simple = {"subprocess": SubprocessLauncher, "in_process": InProcessLauncher}
    if name in simple:
        return simple[name]()
    if name not in ("torchrun", "accelerate"):
        raise ValueError(f"{LAUNCHER_ENV} must be one of subprocess, in_process, torchrun, accelerate, got {name!r}")
    nproc = os.environ.get(NPROC_ENV, "2")
    if not nproc.isdigit() or int(nproc) < 1:
        raise ValueError(f"{NPROC_ENV} must be a whole number >= 1, got {nproc!r}")
    if name == "torchrun":
        return TorchrunLauncher(nproc_per_node=int(nproc))
    return AccelerateLauncher(num_processes=int(nproc))
