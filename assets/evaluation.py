"""The evaluation report asset: tuned vs base on held-out metrics, C-Eval and backdoor probes."""

import dagster as dg

from assets.metadata import png_markdown
from finetune.data.poison import ScreenSummary
from finetune.data.records import StageReport, read_jsonl
from finetune.data.stream import iter_jsonl
from finetune.eval.report import EvalData, evaluate_candidate, report_markdown
from finetune.sft_stage import SftSummary
from resources import PipelineSettings


@dg.asset(
    description="Tuned vs base vs base-with-prompt: ROUGE/BLEU, label accuracy/F1, format compliance, refusals, "
    "held-out loss on the test split (per example, for paired tests); C-Eval; backdoor probe (lexicon + mined "
    "triggers vs random controls); PII regurgitation.",
    group_name="evaluation",
    kinds={"pytorch"},
    owners=["team:ml"],
    code_version="1",
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    raw_records: StageReport,
    screened_records: StageReport,
    sft_dataset: StageReport,
    base_model: dict,
    adapter: dict,
) -> dg.Output:
    cfg = settings.load()
    out_dir = settings.stage_dir("evaluation_report", context.run_id)
    split = {name: read_jsonl(sft_dataset.files.dir / f"{name}.jsonl") for name in ("train", "val", "test")}
    data = EvalData(
        test=split["test"],
        train=split["train"],
        probe_records=split["test"] + split["val"],  # both held out from training
        raw_records=iter_jsonl(raw_records.files.kept),  # streamed: the raw stage may hold millions
        triggers=ScreenSummary.of(screened_records).probe_triggers,  # mined + published triggers the data carries
        # As trained: the sft_dataset stage resolves `sft.cutoff_len: auto`.
        cutoff_len=SftSummary.of(sft_dataset).cutoff_len,
    )
    report = evaluate_candidate(cfg, base_model["path"], adapter["adapter_dir"], data, out_dir, log=context.log.info)
    report |= {"dir": str(out_dir), "run_id": context.run_id}
    t, b, p = report["tuned"], report["base"], report["base_prompted"]
    return dg.Output(
        report,
        metadata={
            "comparison": dg.MetadataValue.md(report_markdown(report)),
            "score_chart": png_markdown(report["chart_png"], "tuned vs base vs base+prompt"),
            "rougeL_tuned": t["metrics"]["rougeL"],
            "rougeL_base": b["metrics"]["rougeL"],
            "rougeL_base_prompted": p["metrics"]["rougeL"],
            "bleu_tuned": t["metrics"]["bleu"],
            "bleu_base": b["metrics"]["bleu"],
            "ceval_tuned": t["ceval"]["accuracy"],
            "ceval_base": b["ceval"]["accuracy"],
            "backdoor_strongest_collapse_tuned": t["backdoor"]["max_asr"],
            "backdoor_probe_prompts": t["backdoor"]["n_prompts"],
            "backdoor_candidates": len(t["backdoor"]["candidates"]),
            "pii_regurgitation_leaks_tuned": t["pii_regurgitation"]["leaks"],
            "examples": dg.MetadataValue.json(report["examples"]),
        },
    )
