"""`finetune run` and the base model given bad input: a clear message naming the setting and a non-zero exit,
never a traceback or an error about something else."""

import shutil
from pathlib import Path

import pytest

from finetune.cli import main
from finetune.config import load_config
from finetune.model.loading import check_model_folder, load_tokenizer, resolve_base_model


def test_run_reads_a_relative_config_from_the_callers_directory_and_a_bad_one_is_a_message(
    tmp_path, monkeypatch, capfd
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "relative.yaml").write_text(f"paths: {{work_dir: {tmp_path / 'work'}}}\npii: {{enabled: false}}\n")
    assert main(["run", "--config", "relative.yaml"]) == 2
    err = capfd.readouterr().err
    assert "not found" not in err and "pii.enabled = false" in err  # the file was found and read
    assert main(["run", "--config", "relative.yaml", "--set", "train.lora_rank=0"]) == 2
    err = capfd.readouterr().err
    assert "train.lora_rank" in err and "got 0" in err and "Traceback" not in err


@pytest.mark.parametrize("base", ["/no/such/model", "./models/mine", "../models/mine", "~/models/x/"])
def test_a_missing_model_path_says_the_path_does_not_exist(base, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_base_model(load_config(None, [f"model.base={base}"]))
    (tmp_path / "d.jsonl").write_text("")
    args = ["train", "--data", str(tmp_path / "d.jsonl"), "--output", str(tmp_path / "out")]
    args += ["--set", f"model.base={base}"]
    assert main(args) == 2
    assert "model.base" in capsys.readouterr().err


def test_a_hub_id_that_cannot_be_fetched_says_it_is_neither_folder_nor_hub_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="there is no local folder .* the Hugging Face hub did not provide it"):
        load_tokenizer("no-such-org/no-such-model")


def test_a_model_folder_without_weights_is_blamed_on_the_weights(tiny_base, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_base, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"has no model weights: expected model.safetensors"):
        check_model_folder(folder)
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"only pickled weights \['pytorch_model.bin'\]"):
        resolve_base_model(load_config(None, [f"model.base={folder}"]))
    shutil.copy(next(Path(tiny_base).glob("*.safetensors")), folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="has weights but no tokenizer"):
        check_model_folder(folder)
    shutil.rmtree(folder)
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        check_model_folder(folder)
