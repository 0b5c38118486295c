"""The Ray engine gives the local engine's stage files, record for record, on a real local Ray cluster.

The cluster is started as a user would (`ray start --head` on 127.0.0.1 with 2 worker CPUs) and stopped
in teardown; the stages run as their assets run them (the streaming `*_stage` functions, file to file),
once per engine, on the shipped sample plus Faker records with duplicates and PII
(`benchmarks/chain_benchmark.write_input`), so every mapped step meets real work: normalising, MinHash
signatures, Presidio, trigger features.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetune.config import PROJECT_ROOT, DedupConfig, PipelineConfig, load_config
from finetune.data import dedup
from finetune.data.curate import clean_stage, curate, dedup_stage, ingest_stage, token_counter
from finetune.data.dedup_shuffle import KEPT, shuffled_dedup
from finetune.data.engine import Engine
from finetune.data.pii import deidentify_stage
from finetune.data.poison import load_lexicon, screen_stage
from finetune.data.records import DROPPED, OUTCOMES, Stage, StageFiles
from finetune.model.loading import load_tokenizer

ray = pytest.importorskip("ray")
sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
from chain_benchmark import write_input  # noqa: E402
from ray_benchmark import RAY, free_port, head_command  # noqa: E402


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    port = free_port()
    temp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ray-test-{port}"  # short: Ray's sockets live under it
    start = [*head_command(port, 2, temp), "--object-store-memory=200000000"]
    # A loopback test cluster without token auth, whatever ~/.ray holds (a private Ray writes a token there,
    # and `ray start` then requires it); the driver here, and Ray, read the same setting.
    auth, os.environ["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE"), "disabled"
    subprocess.run(start, check=True, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        ray.shutdown()
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
        if auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth


@pytest.fixture(scope="module")
def chain_input(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray-input")
    write_input(folder / "faker.jsonl", 1500, pii_share=0.1, seed=5)
    shutil.copy(PROJECT_ROOT / "data" / "sample" / "instructions.jsonl", folder / "sample.jsonl")
    return folder


def _run_chain(cfg: PipelineConfig, inputs: Path, tokenizer, out: Path, engine: Engine) -> dict[Stage, Path]:
    """ingest → clean → dedup → de-identify → screen, each on the kept.jsonl of the stage before."""
    count_tokens = token_counter(tokenizer)
    lexicon = load_lexicon(cfg.screen, cfg.resolve)
    folders = {stage: out / stage for stage in (Stage.RAW, Stage.CLEANED, Stage.DEDUPLICATED)}
    folders |= {Stage.DEIDENTIFIED: out / Stage.DEIDENTIFIED, Stage.SCREENED: out / Stage.SCREENED}
    kept = {stage: StageFiles(folder).kept for stage, folder in folders.items()}
    ingest_stage(sorted(inputs.glob("*.jsonl")), folders[Stage.RAW], cfg=cfg.ingest)
    clean_stage(kept[Stage.RAW], cfg.clean, folders[Stage.CLEANED], count_tokens, engine=engine)
    dedup_stage(kept[Stage.CLEANED], cfg.dedup, folders[Stage.DEDUPLICATED], engine=engine)
    deidentify_stage(kept[Stage.DEDUPLICATED], cfg.pii, "salt", folders[Stage.DEIDENTIFIED], engine=engine)
    screen_stage(kept[Stage.DEIDENTIFIED], cfg.screen, lexicon, folders[Stage.SCREENED], engine=engine)
    return folders


def _report_without_folder(folder: Path) -> str:
    import json

    report = json.loads(StageFiles(folder).report.read_text(encoding="utf-8"))
    report.pop("dir", None)
    return json.dumps(report, sort_keys=True, ensure_ascii=False)


def test_ray_engine_writes_the_local_engines_files(ray_address, chain_input, tmp_path, tiny_base):
    cfg = load_config(None, [f"paths.work_dir={tmp_path}", "pii.entities=[CN_MOBILE_PHONE,EMAIL_ADDRESS,PERSON]"])
    tokenizer = load_tokenizer(tiny_base)
    local = _run_chain(cfg, chain_input, tokenizer, tmp_path / "local", Engine())
    on_ray = _run_chain(cfg, chain_input, tokenizer, tmp_path / "ray", Engine("ray", address=ray_address))
    assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2  # the tasks ran on that cluster
    for stage, folder in local.items():
        for kind in OUTCOMES:
            ours, theirs = StageFiles(folder).outcome(kind), StageFiles(on_ray[stage]).outcome(kind)
            assert ours.read_bytes() == theirs.read_bytes(), f"{stage} {kind}.jsonl differs between engines"
        assert _report_without_folder(folder) == _report_without_folder(on_ray[stage]), f"{stage} report differs"
    counts = {stage: sum(1 for _ in StageFiles(f).kept.open()) for stage, f in local.items()}
    # Every mapped step had work that changed something: duplicates dropped, PII replaced, a poisoned record held.
    assert counts[Stage.DEDUPLICATED] < counts[Stage.CLEANED] and counts[Stage.SCREENED] < counts[Stage.DEIDENTIFIED]
    assert "<CN_MOBILE_PHONE>" in StageFiles(local[Stage.DEIDENTIFIED]).kept.read_text(encoding="utf-8")


def test_curate_on_ray_matches_local(ray_address, chain_input, tmp_path, tiny_base):
    """`finetune curate`'s one-pass chain (ingest → clean → dedup through generators) on both engines."""
    cfg = load_config(None, [f"paths.work_dir={tmp_path}"])
    count_tokens = token_counter(load_tokenizer(tiny_base))
    paths = sorted(chain_input.glob("*.jsonl"))
    engines = {"local": Engine(), "ray": Engine("ray", address=ray_address)}
    for name, engine in engines.items():
        curate(paths, cfg.clean, cfg.dedup, tmp_path / name, count_tokens, ingest=cfg.ingest, engine=engine)
    for kind in OUTCOMES:
        local, on_ray = (StageFiles(tmp_path / name).outcome(kind).read_bytes() for name in engines)
        assert local == on_ray, f"curate {kind}.jsonl differs between engines"


def _duplicate_rich_records(n: int, seed: int) -> list[dict]:
    """Records of which a quarter are near duplicates (a character cut from both halves) and a sixth exact ones
    (upper-cased) of any earlier record, duplicates included: so chains form, and keys repeat across chunks."""
    rng = random.Random(seed)
    words = [f"w{rng.randint(0, 3000)}" for _ in range(4000)]

    def cut(text: str) -> str:
        i = rng.randrange(len(text))
        return text[:i] + text[i + 1 :]

    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        roll = rng.random()
        if pairs and roll < 0.15:
            prompt, response = rng.choice(pairs)
            pairs.append((prompt.upper(), response))
        elif pairs and roll < 0.4:
            prompt, response = rng.choice(pairs)
            pairs.append((cut(prompt), cut(response)))
        else:
            words_in = rng.randint(5, 15), rng.randint(10, 40)
            pairs.append(tuple(" ".join(rng.choices(words, k=k)) for k in words_in))
    return [
        {"id": f"r{i}", "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
        for i, (p, r) in enumerate(pairs)
    ]


def _union_find_would_drop(shuffled) -> int:
    """Records the local rule keeps that a union-find over the verified pairs would merge into an earlier group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(shuffled.decisions.kind)
    a, b, _ = shuffled.pairs
    _, group = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    first_in_group = {}
    for position in range(n):
        first_in_group.setdefault(group[position], position)
    kept = shuffled.decisions.kind == KEPT
    return sum(1 for p in np.flatnonzero(kept) if first_in_group[group[p]] != p)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dedup_shuffled_on_ray_decides_as_the_local_index(ray_address, monkeypatch, seed):
    """Global dedup as a shuffle (exact keys and LSH bands by key, pairs verified on the cluster, decided in input
    order) drops the same records, naming the same kept record and similarity, as the local on-disk index."""
    records = _duplicate_rich_records(3000, seed)
    engine = Engine("ray", address=ray_address)
    monkeypatch.setattr(dedup, "CHUNK", 257)  # 12 chunks: keys and bands meet across chunks and parts
    chains = 0
    for cfg in (DedupConfig(), DedupConfig(threshold=0.7), DedupConfig(near_duplicates=False)):
        local, on_ray = dedup.Deduplicator(cfg), dedup.Deduplicator(cfg, engine=engine)
        expected, got = list(local.stream(records)), list(on_ray.stream(records))
        assert got == expected, f"seed {seed}, {cfg}: outcomes differ"
        assert (on_ray.group_count, on_ray.largest_groups, on_ray.pairs) == (
            local.group_count, local.largest_groups, local.pairs,
        )  # fmt: skip
        assert {row["reason"] for kind, row in got if kind == DROPPED} == (
            {"exact_duplicate", "near_duplicate"} if cfg.near_duplicates else {"exact_duplicate"}
        )
        chains += _union_find_would_drop(
            shuffled_dedup(engine.connect(), records, cfg, on_ray.index.bands, on_ray.index.rows, 257, 10**9)
        )
    assert chains > 0  # the data has chains, where keep-first against kept records is not union-find


def test_dedup_on_ray_falls_back_to_the_local_index_when_band_groups_are_too_large(ray_address, monkeypatch, caplog):
    records = _duplicate_rich_records(1500, seed=3)
    monkeypatch.setattr(dedup, "CHUNK", 257)
    monkeypatch.setattr(dedup, "MAX_CANDIDATE_PAIRS", 3)
    local, on_ray = (
        dedup.Deduplicator(DedupConfig()),
        dedup.Deduplicator(DedupConfig(), engine=Engine("ray", address=ray_address)),
    )
    with caplog.at_level("WARNING", logger="finetune.data.dedup"):
        assert list(on_ray.stream(records)) == list(local.stream(records))
    assert "band groups too large for the shuffle (over 3 candidate pairs" in caplog.text
    assert (on_ray.group_count, on_ray.largest_groups, on_ray.pairs) == (
        local.group_count,
        local.largest_groups,
        local.pairs,
    )


def test_unreachable_cluster_names_the_setting():
    engine = Engine("ray", address=f"127.0.0.1:{free_port()}")
    if ray.is_initialized():
        ray.shutdown()
    with pytest.raises(RuntimeError, match="data.ray_address"):
        list(engine.map(len, ["a"]))


def _materialize_data_assets(tmp: Path, model_cache: Path, *overrides: str) -> dict[str, str]:
    """The data assets and their checks through Dagster, as the UI runs them; what the UI shows of each (asset
    metadata, check results) as text with this run's folder and id taken out, so two runs compare."""
    import dagster as dg
    from dagster._serdes import serialize_value

    from assets import data, training
    from checks import data_checks
    from resources import JsonIOManager, PipelineSettings, SubprocessLauncher, TensorBoardTracker

    work = tmp / "work"
    settings = PipelineSettings(
        config_path=str(PROJECT_ROOT / "finetune.yaml"),
        overrides=[f"paths.work_dir={work}", f"paths.model_cache={model_cache}", *overrides],
    )
    keys = ["base_model", *(str(stage) for stage in Stage if stage != Stage.SFT)]
    (tmp / "home").mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(tmp / "home"), overrides={"telemetry": {"enabled": False}}) as instance:
        result = dg.materialize(
            [*dg.load_assets_from_modules([data, training]), *dg.load_asset_checks_from_modules([data_checks])],
            selection=dg.AssetSelection.assets(*keys),
            resources={
                "settings": settings,
                "io_manager": JsonIOManager(),
                "trainer_launcher": SubprocessLauncher(),  # for the unselected training asset's definition
                "tracker": TensorBoardTracker(),
            },
            instance=instance,
        )
    assert result.success

    def shown(value) -> str:
        return serialize_value(value).replace(str(tmp), "<tmp>").replace(result.run_id, "<run>")

    seen = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        seen[materialization.asset_key.to_user_string()] = shown(materialization.metadata)
    checks = {e.check_name: shown((e.passed, e.metadata)) for e in result.get_asset_check_evaluations()}
    assert {"no_residual_pii", "no_trigger_hits"} <= set(checks)
    return seen | {f"check {name}": text for name, text in checks.items()}


def test_dagster_assets_show_the_same_metadata_and_checks_on_ray(ray_address, tmp_path, model_cache):
    """From the UI a stage is one asset on either engine: the same metadata and the same check results."""
    local = _materialize_data_assets(tmp_path / "local", model_cache)
    on_ray = _materialize_data_assets(
        tmp_path / "ray", model_cache, "data.engine=ray", f"data.ray_address={ray_address}"
    )
    assert ray.is_initialized()  # the ray run's assets joined the cluster (nothing else here did)
    assert set(local) == set(on_ray) and len(local) > 6
    for name, shown in local.items():
        assert shown == on_ray[name], f"{name} differs between the engines"
