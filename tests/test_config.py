import pytest

from finetune.config import PROJECT_ROOT, ConfigError, load_config


def test_defaults_and_yaml_agree_and_overrides_are_typed():
    cfg = load_config(PROJECT_ROOT / "finetune.yaml", ["train.epochs=3", "pii.enabled=false", "gates.alpha=0.05"])
    assert cfg.train.epochs == 3 and cfg.pii.enabled is False and cfg.gates.alpha == 0.05
    assert cfg.train.method == "qlora" and cfg.model.trust_remote_code is False
    assert load_config().train.lora_rank == load_config(PROJECT_ROOT / "finetune.yaml").train.lora_rank


def test_invalid_value_names_key_and_value():
    with pytest.raises(ConfigError, match=r"train.lora_rank.*got 0"):
        load_config(None, ["train.lora_rank=0"])


def test_unknown_key_and_bad_override_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="trian"):
        load_config(None, ["trian.epochs=2"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_relative_paths_resolve_against_config_folder(tmp_path):
    (tmp_path / "c.yaml").write_text("paths:\n  work_dir: out\n")
    assert load_config(tmp_path / "c.yaml").work_dir == tmp_path / "out"
