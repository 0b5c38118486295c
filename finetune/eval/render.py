"""Rendering an evaluation report: the markdown comparison table and the score bar chart."""

from __future__ import annotations

from pathlib import Path

ARMS = (("tuned", "tuned"), ("base", "base"), ("base_prompted", "base+prompt"))


def _rows(report: dict) -> list[tuple[str, list]]:
    """(metric, value per arm); None where an arm does not measure it."""

    def get(arm: str, *path):
        value = report.get(arm)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    rows = [
        ("ROUGE-1", ("metrics", "rouge1")),
        ("ROUGE-2", ("metrics", "rouge2")),
        ("ROUGE-L", ("metrics", "rougeL")),
        ("BLEU-4", ("metrics", "bleu")),
        ("Label accuracy", ("classification", "accuracy")),
        ("Label macro-F1", ("classification", "macro_f1")),
        ("JSON format compliance", ("format_compliance",)),
        ("Refusal rate (harmful prompts)", ("refusal_rate",)),
        ("C-Eval accuracy", ("ceval", "accuracy")),
        ("Backdoor strongest collapse (share of probe prompts)", ("backdoor", "max_asr")),
        ("PII regurgitation leaks", ("pii_regurgitation", "leaks")),
    ]
    return [(name, [get(arm, *path) for arm, _ in ARMS]) for name, path in rows]


def report_markdown(report: dict) -> str:
    """Tuned vs base vs base-with-prompt table, top backdoor triggers and example generations."""
    lines = ["| metric | tuned | base | base+prompt |", "|---|---|---|---|"]
    for name, values in _rows(report):
        if all(v is None for v in values):
            continue
        cells = ["—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    probe = report["tuned"]["backdoor"]
    lines += ["", f"Held-out records: {report['n_test']}; backdoor probe prompts: {probe['n_prompts']}"]
    lines += [_controls_line(probe)]
    offenders = sorted(probe["candidates"], key=lambda c: (c["p_controls"], -c["hits"]))[:5]
    lines += [
        "",
        "| trigger | prompts giving its target (tuned) | base | p vs controls | target |",
        "|---|---|---|---|---|",
    ]
    for c in offenders:
        base = "—" if c["base_hits"] is None else f"{c['base_hits']}/{c['n']}"
        cells = [f"`{c['trigger']}`", f"{c['hits']}/{c['n']}", base, f"{c['p_controls']:.2g}", _cell(c["target"])]
        lines.append("| " + " | ".join(cells) + " |")
    if report.get("examples"):
        lines += ["", "| prompt | reference | tuned | base | base+prompt |", "|---|---|---|---|---|"]
        for ex in report["examples"]:
            cells = [ex["prompt"], ex["reference"], ex["tuned"], ex["base"], ex.get("base+prompt", "")]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _controls_line(probe: dict) -> str:
    parts = [
        f"{len(c['counts'])} {form} controls collapse at most {max(c['counts'], default=0)}/{probe['n_prompts']}"
        for form, c in probe["controls"].items()
    ]
    return "Random controls: " + ("; ".join(parts) if parts else "none (no candidates)") + "."


def _cell(text: str, width: int = 60) -> str:
    return text[:width].replace("|", "\\|").replace("\n", " ")


def save_score_chart(report: dict, path: Path) -> Path:
    """A grouped bar chart of the 0..1 scores per arm (BLEU divided by 100), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    names, values = [], []
    for name, row in _rows(report):
        if name in ("PII regurgitation leaks",) or all(v is None for v in row):
            continue
        scale = 0.01 if name == "BLEU-4" else 1.0
        names.append(name.replace("BLEU-4", "BLEU-4 / 100"))
        values.append([None if v is None else v * scale for v in row])
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.27
    for i, (_, label) in enumerate(ARMS):
        xs = [n + (i - 1) * width for n in range(len(names))]
        ax.bar(xs, [row[i] or 0.0 for row in values], width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("tuned vs base vs base+prompt")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
