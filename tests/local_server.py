"""Servers that tests start on the loopback interface: a free port, the wait until one answers, the stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, seconds: float) -> bool:
    """True once `url` answers; False when `proc` exits first or `seconds` pass."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except OSError:
            if proc.poll() is not None:
                return False
            time.sleep(1)
    return False


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's whole session (its workers outlive a dead parent), SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
