"""Shared fixtures: the embedded tiny base model is built once per session and reused."""

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
