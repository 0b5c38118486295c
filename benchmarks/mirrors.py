"""Reading third-party data from the bare git mirrors the benchmarks use, at a commit they print.

Only the standard library: scripts that run another checkout's code (`lf_demo_benchmark.py --baseline`)
import this without pulling in this checkout's `finetune`.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path


def git_show(repo: Path, path: str, rev: str = "HEAD") -> str:
    """One file's text at `rev`."""
    return subprocess.run(
        ["git", "-C", str(repo), "show", f"{rev}:{path}"], capture_output=True, text=True, check=True
    ).stdout


def head_commit(repo: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def export_folder(repo: Path, rev: str, folder: str, into: Path) -> Path:
    """`folder` of the mirror at `rev`, extracted under `into` (for code that reads files, not text)."""
    tar = subprocess.run(["git", "-C", str(repo), "archive", rev, folder], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(into, filter="data")
    return into / folder
