"""`finetune audit --verify` is not fooled: the six tamperings that used to pass each fail verification with a
non-zero exit, and a manifest re-signed by someone holding the key still differs from Dagster's record."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from finetune.audit import LedgerAnswer, audit_release
from finetune.cli import main
from finetune.config import load_config
from finetune.signing import release_key, sign
from release_ledger import lookup


def _edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")


def _weights(folder: Path) -> Path:
    return folder / "adapter" / "adapter_model.safetensors"


def rewrite_weights_and_their_hash(folder: Path) -> None:
    _weights(folder).write_bytes(b"forged weights")
    forged = hashlib.sha256(b"forged weights").hexdigest()

    def change(m):
        m["adapter"]["files"]["adapter_model.safetensors"] = m["adapter"]["sha256"] = forged
        m["files"]["adapter/adapter_model.safetensors"] = forged

    _edit_manifest(folder, change)


def delete_adapter_section_then_change_weights(folder: Path) -> None:
    _edit_manifest(folder, lambda m: m.pop("adapter"))
    _weights(folder).write_bytes(b"forged weights")


def delete_weight_file_and_its_entry(folder: Path) -> None:
    _weights(folder).unlink()

    def change(m):
        del m["adapter"]["files"]["adapter_model.safetensors"]
        del m["files"]["adapter/adapter_model.safetensors"]

    _edit_manifest(folder, change)


def flip_every_gate_to_failed(folder: Path) -> None:
    _edit_manifest(folder, lambda m: [g.update(passed=False) for g in m["checks"]])


def edit_model_card(folder: Path) -> None:
    card = folder / "MODEL_CARD.md"
    card.write_text(card.read_text(encoding="utf-8").replace("## Gates", "## Gates (all fine)"), encoding="utf-8")


# Each tampering and a problem it must be reported with (the signature catches every manifest edit besides).
TAMPERINGS = [
    (rewrite_weights_and_their_hash, "recorded by Dagster"),
    (delete_adapter_section_then_change_weights, "no 'adapter' section"),
    (delete_weight_file_and_its_entry, "the adapter's sha256 is not one of its listed files"),
    (flip_every_gate_to_failed, "gate 'no_trigger_hits' failed"),
    (edit_model_card, "MISMATCH MODEL_CARD.md: expected"),
]


@pytest.fixture
def copy_of_release(run_without_pii, tmp_path):
    """A work_dir holding a copy of the release and the release key; Dagster's record is the original run's."""
    work = tmp_path / "work"
    release = run_without_pii.release()
    shutil.copytree(release, work / "releases" / release.name)
    shutil.copytree(run_without_pii.work / "secrets", work / "secrets")
    (work / "releases" / "LATEST").write_text(release.name + "\n")

    def ledger(release_id: str) -> LedgerAnswer:
        return LedgerAnswer(**lookup(run_without_pii.work, release_id))

    return load_config(None, [f"paths.work_dir={work}"]), work / "releases" / release.name, ledger


@pytest.mark.slow
def test_an_untouched_release_verifies_against_signature_and_dagster_record(run_without_pii, capsys):
    assert main(["audit", "latest", "--verify", "--set", f"paths.work_dir={run_without_pii.work}"]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "matches the release materialization" in out and "MISMATCH" not in out


@pytest.mark.slow
@pytest.mark.parametrize(("tamper", "reported"), TAMPERINGS, ids=[t.__name__ for t, _ in TAMPERINGS])
def test_each_tampering_is_detected(copy_of_release, tamper, reported, capsys):
    cfg, folder, ledger = copy_of_release
    assert audit_release(cfg, str(folder), verify=True, ledger=ledger) == 0
    capsys.readouterr()
    tamper(folder)
    assert audit_release(cfg, str(folder), verify=True, ledger=ledger) == 1
    out = capsys.readouterr().out
    assert "NOT VERIFIED" in out and reported in out
    if tamper is not edit_model_card:
        assert "MISMATCH manifest.sig: the manifest was changed after it was signed" in out


@pytest.mark.slow
def test_latest_pointing_at_a_forged_folder_is_detected(copy_of_release, capsys):
    cfg, folder, ledger = copy_of_release
    forged = folder.parent / "20991231T000000Z-forged00"
    forged.mkdir()
    (forged / "manifest.json").write_text(json.dumps({"adapter": {"files": {}}}))
    (folder.parent / "LATEST").write_text(forged.name + "\n")
    assert audit_release(cfg, "latest", verify=True, ledger=ledger) == 1
    out = capsys.readouterr().out
    assert "manifest.sig is missing" in out and "no 'checks' section" in out
    (folder.parent / "LATEST").write_text("../../elsewhere\n")  # LATEST may only name a release folder
    assert audit_release(cfg, "latest", verify=True, ledger=ledger) == 2


@pytest.mark.slow
def test_a_file_added_to_the_release_is_detected(copy_of_release, capsys):
    cfg, folder, ledger = copy_of_release
    (folder / "adapter" / "extra.py").write_text("import os\n")
    assert audit_release(cfg, str(folder), verify=True, ledger=ledger) == 1
    assert "adapter/extra.py: not in the manifest" in capsys.readouterr().out


@pytest.mark.slow
def test_a_manifest_resigned_with_the_key_still_differs_from_dagster_record(copy_of_release, capsys):
    cfg, folder, ledger = copy_of_release
    _edit_manifest(folder, lambda m: m.update(code_version="forged"))
    data = (folder / "manifest.json").read_bytes()
    key = release_key(cfg.work_dir / "secrets")
    (folder / "manifest.sig").write_text(json.dumps(sign(data, key)))
    assert audit_release(cfg, str(folder), verify=True, ledger=ledger) == 1
    out = capsys.readouterr().out
    assert "recorded by Dagster" in out and "manifest.sig" not in out  # the signature itself is valid
    # Without the key the signature cannot be checked, and that is not "verified" either.
    shutil.rmtree(cfg.work_dir / "secrets")
    assert audit_release(cfg, str(folder), verify=True, ledger=ledger) == 1
    assert "no release key" in capsys.readouterr().out


@pytest.mark.parametrize(
    "manifest",
    [
        "[]",
        "not json",
        '{"adapter": {"files": {}}}',
        '{"release_id": 1, "adapter": [], "model_card": "x", "required_gates": {}, "checks": "all passed",'
        ' "files": [], "weakened_settings": [1]}',
        '{"release_id": "r", "adapter": {"files": [], "sha256": 3}, "model_card": {}, "required_gates": ["g"],'
        ' "checks": [{"name": "g", "passed": "yes"}], "files": {"a": 1}, "weakened_settings": [{"setting": "x"}],'
        ' "merged": {"files": "all"}}',
    ],
)
def test_a_forged_manifest_of_any_shape_is_reported_never_a_crash(tmp_path, manifest):
    (tmp_path / "manifest.json").write_text(manifest)
    (tmp_path / "manifest.sig").write_text('{"algorithm": "HMAC-SHA256", "signature": "00"}')
    from finetune.audit import verify_release

    result = verify_release(tmp_path, b"key", ledger=lambda rid: LedgerAnswer(True, "test", None))
    assert not result.verified and result.problems
