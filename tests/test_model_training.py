from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoModelForCausalLM

from finetune.config import SftConfig, TrainConfig
from finetune.data.ingest import ingest_files
from finetune.eval.ceval import load_ceval, score_ceval, subject_names
from finetune.model.loading import load_causal_lm, load_tokenizer, model_hash
from finetune.model.tiny import build_embedded_model
from finetune.train.merge import MergeError, merge_adapter
from finetune.train.methods import additional_targets, build_trainable_model, load_adapters, load_tuned
from finetune.train.trainer import train_adapter
from tests.conftest import SAMPLE


def _records(n):
    result, _ = ingest_files([SAMPLE / "instructions.jsonl"])
    return [r for r in result.kept if r["messages"][-1]["content"].strip()][:n]


def test_embedded_model_is_deterministic(tiny_base, tmp_path):
    again = build_embedded_model(SAMPLE / "pretrain_corpus.txt", tmp_path)
    assert model_hash(str(again)) == model_hash(tiny_base) != ""


def test_qlora_loads_4bit_with_cpu_repack_disabled(tiny_base):
    model = build_trainable_model(tiny_base, TrainConfig(method="qlora"))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14 and all(m.support_avx512bf16_for_cpu is False for m in layers)


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_every_lora_parameter_gets_gradient_and_loss_falls(tiny_base, tmp_path, method):
    # train_adapter evaluates on val *before* training: the no-grad forward that killed
    # LoRA gradients in bitsandbytes 0.50.2 on CPU (ENV_NOTES). Every tensor must still learn.
    rows = _records(64)
    cfg = TrainConfig(method=method, epochs=3, batch_size=8, learning_rate=5e-3)
    result = train_adapter(rows[:48], rows[48:], tiny_base, cfg, SftConfig(), tmp_path, log=lambda _: None)
    # 7 linear layers x 2 blocks x (A, B), plus embed_tokens and lm_head trained in full ("auto" for the tiny base)
    assert result.extra["trainable_tensors"] == 30
    assert result.params_with_grad == 30 and result.params_changed == 30
    assert result.val_loss_after < result.val_loss_before
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_additional_targets_are_auto_for_the_tiny_base_only(tiny_base):
    assert additional_targets(TrainConfig(), tiny_base) == ["embed_tokens", "lm_head"]
    assert additional_targets(TrainConfig(), "/models/Qwen2.5-7B") is None
    assert additional_targets(TrainConfig(additional_target=[]), tiny_base) is None
    model = build_trainable_model(tiny_base, TrainConfig(method="lora", additional_target=[]))
    assert sum(p.requires_grad for p in model.parameters()) == 28


def test_ceval_loader_and_scoring(tiny_base, tmp_path):
    questions = load_ceval(SAMPLE / "ceval", "val")
    assert set(questions) == {"high_school_geography", "elementary_mathematics", "chinese_language_and_literature"}
    tok, model = load_tokenizer(tiny_base), load_causal_lm(tiny_base)
    result = score_ceval(
        model,
        tok,
        {"elementary_mathematics": questions["elementary_mathematics"][:5]},
        subject_names(SAMPLE / "ceval"),
        load_ceval(SAMPLE / "ceval", "dev"),
        shots=2,
    )
    assert result["n_questions"] == 5 and 0 <= result["accuracy"] <= 1 and "STEM" in result["per_category"]
    bad = tmp_path / "val"
    bad.mkdir()
    (bad / "x_val.csv").write_text("id,question,A,B,C,D,answer\n0,q,a,b,c,d,E\n")
    with pytest.raises(ValueError, match=r"x_val.csv:2: field 'answer'"):
        load_ceval(tmp_path, "val")


def test_merged_model_reproduces_base_plus_adapter_and_loads_plainly(tiny_base, tmp_path):
    rows = _records(32)
    cfg = TrainConfig(method="lora", epochs=1, batch_size=8, learning_rate=5e-3)
    result = train_adapter(rows[:24], rows[24:], tiny_base, cfg, SftConfig(), tmp_path / "t", log=lambda _: None)
    check = merge_adapter(tiny_base, Path(result.adapter_dir), tmp_path / "merged")
    assert check["max_logit_diff_vs_adapter"] < 1e-4 < check["max_logit_change_vs_base"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").is_file() and merged.config.model_type == "llama"


def test_merge_refuses_an_adapter_that_changes_nothing(tiny_base, tmp_path):
    model = build_trainable_model(tiny_base, TrainConfig(method="lora", additional_target=[]))  # B = 0: a no-op adapter
    model.save_pretrained(tmp_path / "noop", safe_serialization=True)
    with pytest.raises(MergeError, match="does not change"):
        merge_adapter(tiny_base, tmp_path / "noop", tmp_path / "merged")


METHODS = ["qlora", "lora", "dora", "ia3", "prompt_tuning", "full", "freeze", "bitfit"]


def _intended(name: str, method: str) -> bool:
    """Which base-model parameter names a weight method may change."""
    if method == "full":
        return True
    if method == "freeze":
        return ".layers.1." in name  # the tiny model has 2 layers; freeze trains the last one
    return "norm" in name  # bitfit on a bias-free LLaMA: norm gains


@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_only_its_parameters_and_reloads_identically(tiny_base, tmp_path, method):
    rows = _records(48)
    lr = 5e-2 if method in ("ia3", "prompt_tuning", "bitfit") else 5e-3  # few parameters need a larger step
    cfg = TrainConfig(method=method, epochs=3, batch_size=8, learning_rate=lr, additional_target=[])
    before = {n: p.detach().clone() for n, p in load_causal_lm(tiny_base).named_parameters()}
    result = train_adapter(rows[:40], rows[40:], tiny_base, cfg, SftConfig(), tmp_path, log=lambda _: None)
    assert result.val_loss_after < result.val_loss_before, (result.val_loss_before, result.val_loss_after)
    assert result.params_with_grad == result.params_changed == result.extra["trainable_tensors"] > 0
    reloaded = load_tuned(tiny_base, Path(result.adapter_dir))
    if method in ("full", "freeze", "bitfit"):
        changed = {n for n, p in reloaded.named_parameters() if not torch.equal(p, before[n])}
        assert changed and all(_intended(n, method) for n in changed)
        if method != "full":
            assert len(changed) < len(before)
    else:  # the base weights under an adapter never move
        base_now = {
            n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in reloaded.named_parameters()
        }
        assert all(torch.equal(base_now[n], before[n]) for n in before if n in base_now)
    # Reloading the saved output gives the same logits as a second reload (deterministic, complete checkpoint).
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    again = load_tuned(tiny_base, Path(result.adapter_dir))
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, again(input_ids=ids).logits)


def test_several_adapters_share_one_base_and_switch_without_reloading(tiny_base, tmp_path):
    rows = _records(64)
    outputs = {}
    for task, part in (("a", rows[:24]), ("b", rows[24:48])):
        cfg = TrainConfig(method="lora", epochs=1, batch_size=8, learning_rate=1e-2, additional_target=[])
        outputs[task] = train_adapter(part, rows[48:], tiny_base, cfg, SftConfig(), tmp_path / task, log=lambda _: None)
    model = load_adapters(tiny_base, {t: Path(r.adapter_dir) for t, r in outputs.items()})
    base_weight = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    seen = {}
    with torch.no_grad():
        for task in ("a", "b"):
            model.set_adapter(task)
            seen[task] = model(input_ids=ids).logits
            alone = load_tuned(tiny_base, Path(outputs[task].adapter_dir))(input_ids=ids).logits
            assert torch.allclose(seen[task], alone, atol=1e-5)
    assert not torch.allclose(seen["a"], seen["b"])
    assert model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight is base_weight  # never reloaded


def test_evaluation_runs_on_a_gpu_when_there_is_one(tiny_base, tmp_path):
    from finetune.eval.generate import generate_responses

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the device machine; CI has none)")
    rows = _records(24)
    cfg = TrainConfig(method="lora", max_steps=2, batch_size=8, device="cpu")
    result = train_adapter(rows[:16], rows[16:], tiny_base, cfg, SftConfig(), tmp_path, log=lambda _: None)
    tok = load_tokenizer(tiny_base)
    on_gpu = load_tuned(tiny_base, Path(result.adapter_dir), device="cuda", dtype=torch.bfloat16)
    assert on_gpu.device.type == "cuda"
    prompts = [r["messages"][:-1] for r in rows[16:20]]
    outputs = generate_responses(on_gpu, tok, prompts, max_new_tokens=8, batch_size=2)
    assert len(outputs) == 4 and all(isinstance(o, str) for o in outputs)
    questions = load_ceval(SAMPLE / "ceval", "val")
    scored = score_ceval(on_gpu, tok, {"elementary_mathematics": questions["elementary_mathematics"][:3]})
    assert scored["n_questions"] == 3
