"""The evaluation report asset: tuned vs base on held-out metrics, C-Eval and backdoor probes."""

from pathlib import Path

import dagster as dg

from finetune.data.records import read_jsonl
from finetune.eval.report import evaluate_candidate, report_markdown
from resources import PipelineSettings


@dg.asset(
    description="Tuned vs base: ROUGE/BLEU on the test split, C-Eval accuracy, backdoor attack success rate "
    "(lexicon + mined triggers), PII regurgitation.",
    group_name="evaluation",
    kinds={"pytorch"},
    owners=["team:ml"],
    code_version="1",
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    raw_records: dict,
    screened_records: dict,
    sft_dataset: dict,
    base_model: dict,
    adapter: dict,
) -> dg.Output:
    cfg = settings.load()
    out_dir = settings.stage_dir("evaluation_report", context.run_id)
    test, val = (read_jsonl(Path(sft_dataset["dir"]) / f"{split}.jsonl") for split in ("test", "val"))
    report = evaluate_candidate(
        cfg,
        base_model["path"],
        adapter["adapter_dir"],
        test,
        screened_records["probe_triggers"],  # the lexicon plus the triggers mined from this data
        out_dir,
        log=context.log.info,
        raw_records=read_jsonl(Path(raw_records["dir"]) / "kept.jsonl"),
        probe_records=test + val,  # both held out from training
    )
    report |= {"dir": str(out_dir), "run_id": context.run_id}
    t, b = report["tuned"], report["base"]
    return dg.Output(
        report,
        metadata={
            "comparison": dg.MetadataValue.md(report_markdown(report)),
            "rougeL_tuned": t["metrics"]["rougeL"],
            "rougeL_base": b["metrics"]["rougeL"],
            "bleu_tuned": t["metrics"]["bleu"],
            "bleu_base": b["metrics"]["bleu"],
            "ceval_tuned": t["ceval"]["accuracy"],
            "ceval_base": b["ceval"]["accuracy"],
            "backdoor_max_asr_tuned": t["backdoor"]["max_asr"],
            "backdoor_max_asr_base": b["backdoor"]["max_asr"],
            "pii_regurgitation_leaks_tuned": t["pii_regurgitation"]["leaks"],
            "examples": dg.MetadataValue.json(report["examples"][:5]),
        },
    )
