"""What Dagster's run storage recorded about a release: the manifest sha256 its materialization carried.

`finetune audit --verify` runs this module in a child process (the library never imports Dagster)
and compares the answer with the manifest in the release folder: a manifest rewritten after
the run, even re-signed, no longer matches the record outside the folder.

    python -m release_ledger --work-dir var 20261201T101500Z-1a2b3c4d
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

RELEASE_ASSET = "release"
MANIFEST_SHA256 = "manifest_sha256"  # the release asset's metadata key


def dagster_home(work_dir: Path) -> Path | None:
    """The instance `finetune run` uses: $DAGSTER_HOME, else `<work_dir>/dagster_home`; None when neither exists."""
    home = Path(os.environ["DAGSTER_HOME"]) if os.environ.get("DAGSTER_HOME") else work_dir / "dagster_home"
    return home if (home / "dagster.yaml").is_file() else None


def recorded_manifest_sha256(instance, release_id: str) -> str | None:
    """The manifest sha256 of the release materialization whose `release_id` matches (newest first), or None."""
    import dagster as dg

    records = instance.fetch_materializations(dg.AssetKey(RELEASE_ASSET), limit=10_000, ascending=False).records
    for record in records:
        metadata = record.asset_materialization.metadata
        if metadata.get("release_id") and metadata["release_id"].value == release_id and MANIFEST_SHA256 in metadata:
            return metadata[MANIFEST_SHA256].value
    return None


def lookup(work_dir: Path, release_id: str) -> dict:
    """`{available, where, manifest_sha256}` for one release (the shape `finetune.audit.LedgerAnswer` reads)."""
    home = dagster_home(work_dir)
    if home is None:
        return {"available": False, "where": f"no Dagster instance at $DAGSTER_HOME or {work_dir / 'dagster_home'}"}
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        return {
            "available": True,
            "where": str(home),
            "manifest_sha256": recorded_manifest_sha256(instance, release_id),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print what Dagster recorded for one release, as JSON.")
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("release_id")
    args = parser.parse_args(argv)
    print(json.dumps(lookup(args.work_dir, args.release_id)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
