"""Peak resident memory of this process."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB.

    Reads VmHWM (the high-water mark of this process's own address space) where /proc has it:
    `ru_maxrss` survives exec on Linux, so a process started by a large parent (a Dagster run, a
    benchmark holding its data) would report the parent's size at fork instead of its own.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, where /proc exists anyway
