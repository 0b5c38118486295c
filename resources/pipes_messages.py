"""The Pipes message reader the training launchers use: it hands Dagster whole lines only.

Dagster's own file readers tail the message file with `readline()`, which returns the part of a line
written so far when it reaches the end of a message the child is still writing. The JSON decode of that
part fails, the reader thread dies, and every later message is lost: in CI the adapter's materialization
(which carries the loss curve as an inline PNG, so it is written in several chunks) arrived cut short and
the run failed with `KeyError: 'train_result'`. Hand-written because no Dagster reader buffers an
unfinished line; it keeps the file protocol, so the child's `open_dagster_pipes()` is unchanged.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg
from dagster_pipes import PipesDefaultMessageWriter

POLL_SECONDS = 0.01


def whole_lines(path: str, should_stop: Callable[[], bool], poll_seconds: float = POLL_SECONDS) -> Iterator[bytes]:
    """Yield each newline-terminated line of the growing file `path`, until one last read after `should_stop()`.

    Bytes, so a read that ends between a character's bytes is harmless (0x0A is never inside one). Raises
    ValueError when the file ends inside a line: the writer stopped in the middle of a message.
    """
    parts: list[bytes] = []  # the unfinished line, in the pieces it arrived in
    with open(path, "rb") as stream:
        while True:
            stopping = should_stop()  # asked before the read, so that read sees everything written before the stop
            chunk = stream.read()
            end = chunk.rfind(b"\n")
            if end < 0:
                if chunk:  # an idle poll adds nothing, however long the child stays quiet
                    parts.append(chunk)
            else:
                lines = b"".join([*parts, chunk[:end]]).split(b"\n")
                parts = [chunk[end + 1 :]]
                yield from (line for line in lines if line.strip())
            if stopping:
                break
            if not chunk:
                time.sleep(poll_seconds)
    if rest := b"".join(parts).strip():
        raise ValueError(
            f"the Pipes message file {path} ends inside a message ({len(rest)} bytes with no newline): "
            "the external process stopped while writing it; its log above says why"
        )


class WholeLineMessageReader(dg.PipesMessageReader):
    """Reads the messages the external process appends to a temporary file, one whole line at a time."""

    def __init__(self, poll_seconds: float = POLL_SECONDS):
        self._poll_seconds = poll_seconds

    @contextmanager
    def read_messages(self, handler: dg.PipesMessageHandler) -> Iterator[dict]:
        with tempfile.TemporaryDirectory() as tempdir:
            path = os.path.join(tempdir, "messages.jsonl")
            open(path, "wb").close()
            closed = threading.Event()
            thread = threading.Thread(target=self._read, args=(path, handler, closed), daemon=True)
            thread.start()
            try:
                yield {
                    PipesDefaultMessageWriter.FILE_PATH_KEY: path,
                    PipesDefaultMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: False,
                }
            finally:
                closed.set()
                thread.join()

    def _read(self, path: str, handler: dg.PipesMessageHandler, closed: threading.Event) -> None:
        origin = f"{type(self).__name__} reader thread"
        try:
            for line in whole_lines(path, closed.is_set, self._poll_seconds):
                try:
                    handler.handle_message(json.loads(line))
                except Exception:  # reported, and the messages after it still arrive
                    handler.report_pipes_framework_exception(origin, sys.exc_info())
        except Exception:
            handler.report_pipes_framework_exception(origin, sys.exc_info())

    def no_messages_debug_text(self) -> str:
        return "Attempted to read messages from a temporary file the external process appends to."
