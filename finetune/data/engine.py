"""Where a data stage's per-record work runs: in this process (`local`) or as tasks on a Ray cluster (`ray`).

A stage maps only pure work through `Engine.map` (a function of one record or one chunk of records:
normalising text, MinHash signatures, PII detection and replacement, trigger features, the screen's
per-record detectors) and takes every decision that depends on other records in this process, in input
order: the ids de-identification has kept, trigger mining, keep-first deduplication (which on Ray first
shuffles its keys across the cluster, `dedup_shuffle.py`, and decides from the pairs found). So the engine
changes where the time goes, never an outcome: both write the same stage files, record for record
(tests/test_ray_engine.py).

Ray tasks over ordered batches rather than Ray Data's `map_batches`: a stage reads its input as one
Python iterator (the upstream kept.jsonl, or the previous stage's generator in `finetune curate`) and
its decisions need the results back in input order in one loop. `ray.data.from_items` would first hold
the whole input in this process, and Ray Data's readers would parse JSONL into Arrow tables, whose
inferred schema does not survive records with differing fields. Tasks keep `stream.ordered_map`'s
contract instead: at most two batches per cluster CPU in flight, results yielded in input order.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from finetune.data.stream import apply_batch, ordered_map

if TYPE_CHECKING:
    from finetune.config import DataConfig

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Engine:
    """The executor of one run's data stages (see the module docstring); `Engine()` is the local one."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None  # ray: the cluster to join; None starts a private Ray on this machine
    cpus: int = 0  # ray, private: CPUs it may use (0 = all)

    @classmethod
    def of(cls, cfg: DataConfig) -> Engine:
        return cls(cfg.engine, cfg.ray_address, cfg.ray_cpus)

    def map(
        self, fn: Callable[[T], R], items: Iterable[T], batch: int = 256, workers: int = 1, serial_first: int = 0
    ) -> Iterator[R]:
        """`fn` over `items`, results in input order. Locally, `workers` > 1 processes take over after the first
        `serial_first` items (`stream.ordered_map`); on Ray every batch is one task and the cluster's CPUs set
        the parallelism. `fn` must be picklable (cloudpickle on Ray)."""
        if self.kind == "ray":
            return self._ray_map(fn, items, batch)
        if workers <= 1:
            return map(fn, items)
        return ordered_map(fn, items, workers, serial_first, batch)

    def paired(self, fn: Callable[[T], R], items: Iterable[T], **kwargs) -> Iterator[tuple[T, R]]:
        """`(item, fn(item))` in input order, like `map`; the items in flight wait here, not in a round trip."""
        held: deque = deque()

        def feed() -> Iterator[T]:
            for item in items:
                held.append(item)
                yield item

        for result in self.map(fn, feed(), **kwargs):
            yield held.popleft(), result

    def _ray_map(self, fn: Callable[[T], R], items: Iterable[T], batch: int) -> Iterator[R]:
        ray = self.connect()
        task = ray.remote(apply_batch)
        fn_ref = ray.put(fn)  # serialised once, not with every batch
        in_flight = 2 * max(int(ray.cluster_resources().get("CPU", 1)), 1)
        pending: deque = deque()
        it = iter(items)
        while chunk := list(itertools.islice(it, batch)):
            pending.append(task.remote(fn_ref, chunk))
            if len(pending) >= in_flight:
                yield from ray.get(pending.popleft())
        while pending:
            yield from ray.get(pending.popleft())

    def connect(self):
        """The `ray` module, connected to this engine's cluster (once per process)."""
        if self.address:
            _token_auth_if_available()  # before Ray is imported: it reads its auth mode once, at import
        try:
            import ray
        except ImportError as e:  # pragma: no cover - ray is a dependency; a trimmed install may lack it
            raise RuntimeError("data.engine is 'ray' but Ray is not installed: pip install -e '.[ray]'") from e
        if not ray.is_initialized():
            if self.address:
                _check_reachable(self.address)
            options = {"address": self.address} if self.address else {"address": "local", "num_cpus": self.cpus or None}
            ray.init(**options, include_dashboard=False, logging_level=logging.WARNING, configure_logging=False)
        return ray


def _check_reachable(address: str) -> None:
    """Fail at once, naming the setting, when nothing listens at a 'host:port' address: ray.init retries a
    closed port for minutes, logging only connection warnings."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return  # 'auto' and ray:// addresses are Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise RuntimeError(
            f"data.ray_address {address!r}: no Ray cluster answers there ({e}). Start one with `ray start --head`, "
            "or set data.ray_address to null for a private Ray on this machine."
        ) from None


def _token_auth_if_available() -> None:
    """Send this machine's Ray token when there is one, as `ray start` does: a cluster started where a token
    exists (~/.ray/auth_token, written by any private Ray) requires it, yet a joining driver sends none unless
    RAY_AUTH_MODE says so, and is refused after minutes of retries. A cluster without token auth ignores it."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


LOCAL = Engine()
