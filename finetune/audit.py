"""Release audit: print a release's lineage and verify its file hashes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.config import PipelineConfig
from finetune.data.records import describe_counts
from finetune.release import ReleaseError, file_hashes


def find_release(cfg: PipelineConfig, ref: str) -> Path:
    """Resolve 'latest', a release id or a path to a release folder.

    Raises:
        ReleaseError: nothing matches; the message lists where it looked.
    """
    root = cfg.work_dir / "releases"
    if ref == "latest":
        latest = root / "LATEST"
        if not latest.is_file():
            raise ReleaseError(f"no release yet under {root}; run `finetune run` first")
        ref = latest.read_text().strip()
    for candidate in (Path(ref), root / ref):
        if (candidate / "manifest.json").is_file():
            return candidate
    raise ReleaseError(f"release {ref!r} not found (looked for {ref}/manifest.json and {root / ref}/manifest.json)")


def verify_release(folder: Path) -> list[str]:
    """Mismatches between the manifest's adapter (and merged model) hashes and the files on disk (empty = verified)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    problems = []
    for part in ("adapter", "merged"):
        if part not in manifest:
            continue
        expected, actual = manifest[part]["files"], file_hashes(folder / part)
        problems += [
            f"{name}: expected {sha[:12]}…, found {actual.get(name, 'missing')[:12]}…"
            for name, sha in expected.items()
            if actual.get(name) != sha
        ]
        problems += [f"{name}: not in the manifest" for name in actual if name not in expected]
    return problems


def lineage_text(manifest: dict[str, Any]) -> str:
    """Human-readable lineage of one release."""
    lines = [
        f"release {manifest['release_id']} ({manifest['created_at']})",
        f"code version {manifest['code_version']}, config {manifest['config_fingerprint']}",
        f"base model {manifest['base_model']['id']} sha256 {manifest['base_model']['sha256'][:16]}",
        f"adapter sha256 {manifest['adapter']['sha256'][:16]}",
        f"dagster run {manifest['dagster_run_id']}",
        "raw files:",
    ]
    lines += [f"  {f['path']} sha256 {f['sha256'][:16]} ({f['rows']} rows)" for f in manifest["raw_files"]]
    lines.append("stages:")
    lines += [f"  {describe_counts(s)}" for s in manifest["stages"]]
    lines.append("checks:")
    lines += [f"  [{'pass' if g['passed'] else 'FAIL'}] {g['name']}: {g['message']}" for g in manifest["checks"]]
    return "\n".join(lines)


def audit_release(cfg: PipelineConfig, ref: str, as_json: bool = False, verify: bool = False) -> int:
    """Print the lineage (or verify hashes); returns a process exit code."""
    try:
        folder = find_release(cfg, ref)
    except ReleaseError as exc:
        print(f"error: {exc}")
        return 2
    if verify:
        problems = verify_release(folder)
        for p in problems:
            print(f"MISMATCH {p}")
        print(f"{folder}: {'verified' if not problems else f'{len(problems)} mismatches'}")
        return 1 if problems else 0
    manifest = json.loads((folder / "manifest.json").read_text())
    print(json.dumps(manifest, ensure_ascii=False, indent=2) if as_json else lineage_text(manifest))
    return 0
