"""Find raw data files under the configured paths and open them without trusting what they are.

An input folder may hold symlink loops, dangling links, FIFOs, devices, sub-folders named like data
files (`x.jsonl/`) and files the user cannot read. None of them may hang or abort a run: each is
listed with the reason it cannot be read, and the ingest stage accounts for it as a quarantined item.
Files are opened non-blocking and checked to be regular files before a byte is read, so a FIFO that
appears between listing and opening cannot hang the run either.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
DATASET_INFO = "dataset_info.json"  # LLaMA-Factory's dataset description, read as-is


class IngestError(ValueError):
    """A raw data path cannot be read at all."""


class UnreadableFile(IngestError):
    """One file cannot be opened or is not a regular file; the message says why."""


@dataclass(frozen=True)
class RawFile:
    """A data file found under an input path; `problem` says why it cannot be read (None: it can be tried)."""

    path: Path
    problem: str | None = None


_ERRNO_REASONS = {
    errno.EACCES: "permission denied (the user running the pipeline cannot read it)",
    errno.EPERM: "operation not permitted",
    errno.ELOOP: "symlink loop (the link points back at itself)",
    errno.ENOENT: "no such file (a dangling symlink?)",
    errno.EISDIR: "is a folder",
}


def os_reason(exc: OSError) -> str:
    """A short human reason for an OS error (errno name kept so it can be searched)."""
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{_ERRNO_REASONS.get(exc.errno or 0, exc.strerror or str(exc))} [{name or type(exc).__name__}]"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def has_data_suffix(name: str) -> bool:
    """Whether a file name is one ingest reads (`.jsonl`, a dot-file named like a suffix, counts too)."""
    return name.lower().endswith(SUPPORTED_SUFFIXES)


def discover(path: Path) -> list[RawFile]:
    """The data files under `path` (a file or folder), sorted by path; folders are walked following
    symlinks, each real folder once (a symlink cycle ends there).

    Raises:
        IngestError: `path` itself does not exist.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise IngestError(
            f"data path does not exist: {path} (check --input/--data, or paths.raw_data in the config)"
        ) from None
    except OSError as exc:
        return [RawFile(Path(path), os_reason(exc))]
    if not stat.S_ISDIR(st.st_mode):
        problem = None if stat.S_ISREG(st.st_mode) else f"{_kind(st.st_mode)}, not a regular file"
        return [RawFile(Path(path), problem)]
    return sorted(_walk(Path(path)), key=lambda f: str(f.path))


def _walk(folder: Path) -> list[RawFile]:
    found: list[RawFile] = []
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            st = os.stat(current)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(current))
        except OSError as exc:
            found.append(RawFile(current, f"cannot list folder: {os_reason(exc)}"))
            continue
        for entry in entries:
            entry_path = Path(entry.path)
            try:
                mode = os.stat(entry_path).st_mode  # follows symlinks: a link to a folder is walked
            except OSError as exc:  # symlink loop, dangling link
                if has_data_suffix(entry.name):
                    found.append(RawFile(entry_path, os_reason(exc)))
                continue
            if stat.S_ISDIR(mode):  # also a folder named like a data file (x.jsonl/)
                stack.append(entry_path)
            elif has_data_suffix(entry.name) and entry.name != DATASET_INFO:
                problem = None if stat.S_ISREG(mode) else f"{_kind(mode)}, not a regular file"
                found.append(RawFile(entry_path, problem))
    return found


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for binary reading; never blocks on a FIFO or device.

    Raises:
        UnreadableFile: it cannot be opened, or it is not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot open: {os_reason(exc)}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(f"{path}: {_kind(mode)}, not a regular file; only regular files are read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_sha256(path: Path) -> str:
    """Hex sha256 of a regular file's bytes.

    Raises:
        UnreadableFile: see `open_regular`.
    """
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sniff_encoding(head: bytes) -> str:
    """The text encoding of a file from its first bytes: a BOM, else UTF-16 told by its NUL bytes, else UTF-8.

    Windows tools (Excel's "Unicode text", PowerShell's `>`) write UTF-16; without the BOM, text that is
    mostly ASCII (JSON punctuation and keys, CSV headers) has a NUL in every other byte.
    """
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    sample = head[: len(head) - len(head) % 2]
    if len(sample) >= 4:
        even, odd = sample[0::2].count(0), sample[1::2].count(0)
        if odd >= len(sample) // 4 and even == 0:
            return "utf-16-le"
        if even >= len(sample) // 4 and odd == 0:
            return "utf-16-be"
    return "utf-8"
