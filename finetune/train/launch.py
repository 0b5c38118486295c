"""How the trainer process is started, and how it dies with whoever started it.

Commands are built from typed, range-checked values (never from a command line taken from config):
plain Python, torchrun, or accelerate launch, each running the `train_process` module. Every
process in the chain asks the kernel to kill it when its parent dies (Linux PR_SET_PDEATHSIG), so
a SIGKILLed run worker cannot leave a trainer, a torchrun agent or its ranks training as orphans.

`python -m finetune.train.launch torchrun|accelerate ...` is the small wrapper that arms that
signal and then becomes the launcher itself (exec keeps the pid and the armed signal).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys

ENTRY_MODULE = "train_process"
PARENT_PID_ENV = "FINETUNE_TRAINER_PARENT_PID"
_PR_SET_PDEATHSIG = 1
_ENDPOINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*:\d{1,5}$")
# The launchers this wrapper may become, as modules of the current Python (no PATH lookup).
LAUNCHER_MODULES = {"torchrun": "torch.distributed.run", "accelerate": "accelerate.commands.launch"}


def python_command() -> list[str]:
    """The trainer as one plain process of the current Python."""
    return [sys.executable, "-m", ENTRY_MODULE]


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def torchrun_command(nproc_per_node: int, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str = "") -> list[str]:
    """`torchrun` with `nproc_per_node` ranks per machine; several machines meet at `rdzv_endpoint` (host:port)."""
    args = [f"--nproc-per-node={_positive('nproc_per_node', nproc_per_node)}"]
    if _positive("nnodes", nnodes) == 1:
        args.insert(0, "--standalone")
    else:
        if not _ENDPOINT.match(rdzv_endpoint):
            raise ValueError(f"rdzv_endpoint must be host:port when nnodes > 1, got {rdzv_endpoint!r}")
        if not 0 <= node_rank < nnodes:
            raise ValueError(f"node_rank must be in 0..{nnodes - 1}, got {node_rank!r}")
        args += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d"]
        args += [f"--rdzv-endpoint={rdzv_endpoint}"]
    return _wrapped("torchrun", args)


def accelerate_command(num_processes: int) -> list[str]:
    """`accelerate launch` with `num_processes` processes on this machine (the trainer does its own precision)."""
    args = [f"--num_processes={_positive('num_processes', num_processes)}", "--num_machines=1", "--mixed_precision=no"]
    args.append("--dynamo_backend=no")
    return _wrapped("accelerate", [*args, "--multi_gpu"] if num_processes > 1 else args)


def _wrapped(launcher: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", __name__, launcher, *args, "-m", ENTRY_MODULE]


def child_env() -> dict[str, str]:
    """Environment for a trainer started by this process: it checks that this process is still its parent."""
    return {PARENT_PID_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere a no-op).

    When the parent that started us already died before the signal was armed, exit at once.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):
        os._exit(1)


def main(argv: list[str]) -> None:
    """Arm the parent-death signal, then become the named launcher (its ranks arm their own)."""
    if not argv or argv[0] not in LAUNCHER_MODULES:
        raise SystemExit(f"usage: python -m {__name__} {{{'|'.join(LAUNCHER_MODULES)}}} ARGS...; got {argv[:1]}")
    die_with_parent()
    os.environ[PARENT_PID_ENV] = str(os.getpid())  # the ranks' parent is this process, once it is the launcher
    os.execv(sys.executable, [sys.executable, "-m", LAUNCHER_MODULES[argv[0]], *argv[1:]])


if __name__ == "__main__":
    main(sys.argv[1:])
