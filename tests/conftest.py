"""Shared fixtures: the embedded tiny base model is built once per session and reused."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from finetune.config import PROJECT_ROOT, PipelineConfig, load_config
from finetune.model.tiny import build_embedded_model

SAMPLE = PROJECT_ROOT / "data" / "sample"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_base(model_cache) -> str:
    """Path of the embedded tiny base model (built offline, ~15 s once)."""
    return str(build_embedded_model(SAMPLE / "pretrain_corpus.txt", model_cache))


@pytest.fixture
def make_config(tmp_path, model_cache):
    """Build a config whose artifacts go to a temp folder; extra `key=value` overrides allowed."""

    def _make(*overrides: str) -> PipelineConfig:
        return load_config(
            PROJECT_ROOT / "finetune.yaml",
            [f"paths.work_dir={tmp_path / 'work'}", f"paths.model_cache={model_cache}", *overrides],
        )

    return _make


# De-identification off, accepted on record, and every gate that may then fail overridden: the
# release exists, so its evaluation report, model card and Dagster storage can be searched for raw PII.
PII_OFF_ACCEPTED = (
    "pii.enabled=false",
    "gates.weakened_settings.pii.enabled.by=privacy@example.org",
    "gates.weakened_settings.pii.enabled.reason=leak test: trained on raw PII on purpose",
)
OVERRIDABLE = ("no_residual_pii", "no_pii_regurgitation", "not_worse_than_base", "backdoor_asr_below_threshold")


@dataclass
class HeadlessRun:
    """A `finetune run` in a temp work_dir (Dagster's storage under `<work_dir>/dagster_home`)."""

    work: Path
    exit_code: int
    overrides: list[str]

    @property
    def home(self) -> Path:
        return self.work / "dagster_home"

    def release(self) -> Path:
        return self.work / "releases" / (self.work / "releases" / "LATEST").read_text().strip()


@pytest.fixture(scope="session")
def run_without_pii(tmp_path_factory, model_cache) -> HeadlessRun:
    """One whole headless run with pii.enabled=false accepted on record, ending in a release (~1-2 min)."""
    from finetune.config import GATE_NAMES
    from headless import run_pipeline
    from resources.settings import DEFAULT_CONFIG

    work = tmp_path_factory.mktemp("pii_off") / "work"
    overrides = [f"paths.work_dir={work}", f"paths.model_cache={model_cache}", *PII_OFF_ACCEPTED]
    overrides += [
        f"gates.overrides.{gate}.{key}={value}"
        for gate in OVERRIDABLE
        if gate in GATE_NAMES
        for key, value in (("by", "privacy@example.org"), ("reason", "leak test: ship whatever the gates say"))
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(work / "dagster_home"))
        code = run_pipeline(DEFAULT_CONFIG, overrides)
    return HeadlessRun(work, code, overrides)
