"""Release audit: print a release's lineage, and verify that a release folder is the one that was built.

A folder verifies only when all of these hold: its manifest is signed with the release key
(kept outside the folder, see `finetune.signing`); the manifest has every section (adapter or
model files, model card, gates, file list); every gate it requires has a passing (or overridden)
result; every file in the folder is listed with its sha256 and every listed file is there; and,
where Dagster's storage can be read, the manifest's sha256 equals the one the release asset's
materialization recorded there.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import PROJECT_ROOT, PipelineConfig
from finetune.data.records import StageCounts
from finetune.release import MANIFEST, MODEL_CARD, SIGNATURE, ReleaseError, file_hashes
from finetune.signing import release_key, signature_problem

REQUIRED_SECTIONS = ("release_id", "adapter", "model_card", "required_gates", "checks", "files", "weakened_settings")
LEDGER_MODULE = "release_ledger"  # the Dagster layer's reader of run storage (this library never imports Dagster)


@dataclass(frozen=True)
class LedgerAnswer:
    """What Dagster's run storage recorded for one release: whether it could be read, where, and the hash."""

    available: bool
    where: str
    manifest_sha256: str | None = None


Ledger = Callable[[str], LedgerAnswer]


@dataclass
class Verification:
    """The verdict on one release folder: every problem found, and what could not be checked."""

    folder: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.problems


def find_release(cfg: PipelineConfig, ref: str) -> Path:
    """Resolve 'latest', a release id or a path to a release folder.

    Raises:
        ReleaseError: nothing matches, or `releases/LATEST` names anything but a folder in `releases/`.
    """
    root = cfg.work_dir / "releases"
    if ref == "latest":
        latest = root / "LATEST"
        if not latest.is_file():
            raise ReleaseError(f"no release yet under {root}; run `finetune run` first")
        name = latest.read_text(encoding="utf-8").strip()
        if not name or Path(name).name != name or name in (".", ".."):
            raise ReleaseError(f"{latest} holds {name!r}, not the id of a release folder in {root}")
        if not (root / name / MANIFEST).is_file():
            raise ReleaseError(f"{latest} names {name!r}, but {root / name / MANIFEST} does not exist")
        return root / name
    for candidate in (Path(ref), root / ref):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise ReleaseError(f"release {ref!r} not found (looked for {ref}/{MANIFEST} and {root / ref}/{MANIFEST})")


def verify_release(folder: Path, key: bytes | None, ledger: Ledger | None = None) -> Verification:
    """Check one release folder against its signed manifest and Dagster's record of it (see the module doc)."""
    result = Verification(folder)
    try:
        data = (folder / MANIFEST).read_bytes()
        manifest = json.loads(data)
    except (OSError, ValueError) as exc:
        result.problems.append(f"{MANIFEST}: unreadable ({exc})")
        return result
    if not isinstance(manifest, dict):
        result.problems.append(f"{MANIFEST}: not a JSON object")
        return result
    result.problems += _signature_problems(folder, data, key)
    missing = [s for s in REQUIRED_SECTIONS if s not in manifest]
    result.problems += [f"{MANIFEST} has no '{s}' section" for s in missing]
    if not missing:
        result.problems += _gate_problems(manifest) + _file_problems(folder, manifest)
    if ledger is None:
        result.notes.append("Dagster's run storage was not checked (not available)")
    else:
        result.problems += _ledger_problems(manifest.get("release_id", folder.name), data, ledger, result.notes)
    return result


def _signature_problems(folder: Path, data: bytes, key: bytes | None) -> list[str]:
    if not (folder / SIGNATURE).is_file():
        return [f"{SIGNATURE} is missing: the manifest is not signed"]
    if key is None:
        return ["no release key to check the signature with (set FINETUNE_RELEASE_KEY or provide <work_dir>/secrets)"]
    try:
        signature = json.loads((folder / SIGNATURE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{SIGNATURE}: unreadable ({exc})"]
    problem = signature_problem(data, signature if isinstance(signature, dict) else {}, key)
    return [f"{SIGNATURE}: {problem}"] if problem else []


def _mapping(value: Any) -> dict[str, Any]:
    # A forged manifest may hold anything; a wrong shape is a problem to report, not a crash.
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _gate_problems(manifest: dict[str, Any]) -> list[str]:
    checks = [c for c in _items(manifest["checks"]) if isinstance(c, dict)]
    problems = [f"gate {c.get('name')!r} failed: {c.get('message', '')}" for c in checks if c.get("passed") is not True]
    names = {c.get("name") for c in checks}
    required = _items(manifest["required_gates"])
    problems += [f"gate {g!r} has no result in the manifest" for g in required if g not in names]
    if not required:
        problems.append(f"{MANIFEST} requires no gates")
    problems += [
        f"weakened setting {_mapping(w).get('setting')!r} accepted by nobody"
        for w in _items(manifest["weakened_settings"])
        if not _mapping(w).get("by")
    ]
    return problems


def _file_problems(folder: Path, manifest: dict[str, Any]) -> list[str]:
    listed = _mapping(manifest["files"])
    actual = {k: v for k, v in file_hashes(folder).items() if k not in (MANIFEST, SIGNATURE)}
    problems = [
        f"{name}: expected {str(sha)[:12]}…, found {actual[name][:12] if name in actual else 'missing'}"
        for name, sha in listed.items()
        if actual.get(name) != sha
    ]
    problems += [f"{name}: not in the manifest" for name in actual if name not in listed]
    for part in ("adapter", "merged"):
        if part not in manifest:
            continue
        files = _mapping(_mapping(manifest[part]).get("files"))
        if not files:
            problems.append(f"{MANIFEST}: '{part}' lists no files")
        problems += [
            f"{part}/{name}: the '{part}' section and the file list disagree"
            for name, sha in files.items()
            if listed.get(f"{part}/{name}") != sha
        ]
    adapter = _mapping(manifest["adapter"])
    if adapter.get("sha256") not in _mapping(adapter.get("files")).values():
        problems.append(f"{MANIFEST}: the adapter's sha256 is not one of its listed files")
    card = _mapping(manifest["model_card"])
    if card.get("file") != MODEL_CARD or listed.get(MODEL_CARD) != card.get("sha256"):
        problems.append(f"{MANIFEST}: the model card section does not match the listed {MODEL_CARD}")
    return problems


def _ledger_problems(release_id: str, data: bytes, ledger: Ledger, notes: list[str]) -> list[str]:
    answer = ledger(str(release_id))
    if not answer.available:
        notes.append(f"Dagster's run storage was not checked ({answer.where})")
        return []
    if answer.manifest_sha256 is None:
        return [f"Dagster's run storage ({answer.where}) has no materialization of release {release_id!r}"]
    actual = hashlib.sha256(data).hexdigest()
    if answer.manifest_sha256 != actual:
        return [
            f"{MANIFEST} sha256 {actual[:12]}… differs from {answer.manifest_sha256[:12]}… recorded by Dagster "
            f"({answer.where}) when release {release_id!r} was materialized"
        ]
    notes.append(f"manifest sha256 matches the release materialization in {answer.where}")
    return []


def dagster_ledger(work_dir: Path) -> Ledger:
    """Ask the Dagster layer (in a child process: this library never imports Dagster) what run storage recorded."""

    def ask(release_id: str) -> LedgerAnswer:
        proc = subprocess.run(
            [sys.executable, "-m", LEDGER_MODULE, "--work-dir", str(work_dir), release_id],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return LedgerAnswer(False, f"reading it failed: {tail[0]}")
        return LedgerAnswer(**json.loads(proc.stdout))

    return ask


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
    lines += [f"  {StageCounts.from_json(s).describe()}" for s in manifest["stages"]]
    lines.append("checks:")
    lines += [f"  [{'pass' if g['passed'] else 'FAIL'}] {g['name']}: {g['message']}" for g in manifest["checks"]]
    weakened = manifest.get("weakened_settings", [])
    lines.append("weakened settings:" + ("" if weakened else " none"))
    lines += [f"  {w['description']} (accepted by {w['by']}: {w['reason']})" for w in weakened]
    return "\n".join(lines)


def audit_release(
    cfg: PipelineConfig, ref: str, as_json: bool = False, verify: bool = False, ledger: Ledger | None = None
) -> int:
    """Print the lineage, or verify the folder; returns a process exit code (0 verified / printed, 1 not verified,
    2 not found or unreadable). `ledger` reads Dagster's record of releases (default: `dagster_ledger`)."""
    try:
        folder = find_release(cfg, ref)
    except ReleaseError as exc:
        print(f"error: {exc}")
        return 2
    if verify:
        result = verify_release(folder, release_key(cfg.work_dir / "secrets"), ledger or dagster_ledger(cfg.work_dir))
        for problem in result.problems:
            print(f"MISMATCH {problem}")
        for note in result.notes:
            print(f"note: {note}")
        print(f"{folder}: {'verified' if result.verified else f'NOT VERIFIED ({len(result.problems)} problems)'}")
        return 0 if result.verified else 1
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        print(json.dumps(manifest, ensure_ascii=False, indent=2) if as_json else lineage_text(manifest))
    except (ValueError, KeyError, TypeError) as exc:
        print(f"error: {folder / MANIFEST} is not a complete manifest ({exc!r}); run `finetune audit --verify`")
        return 2
    return 0
