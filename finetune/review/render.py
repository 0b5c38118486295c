"""The expert review as a markdown table (asset metadata, model card) and a PNG chart."""

from __future__ import annotations

from pathlib import Path

from finetune.eval.predictions import ARMS
from finetune.review.criteria import CRITERIA
from finetune.review.stats import TUNED, ReviewSummary


def _interval(s) -> str:
    return f"{s.mean:.2f}" + (f" [{s.low:.2f}, {s.high:.2f}]" if s.low is not None else "")


def review_markdown(summary: ReviewSummary, gate_message: str = "") -> str:
    """Criteria table (mean [CI] per arm), tuned's win/tie/loss, agreement and items per rater."""
    lines = [f"Packet `{summary.packet_id}`: {summary.items_judged} of {summary.n_items} items judged, "
             f"{summary.judgements} judgements by {summary.raters} raters."]  # fmt: skip
    if gate_message:
        lines += ["", f"experts_prefer_tuned: {gate_message}"]
    if not summary.judgements:
        return "\n".join(lines + [""] + [f"- {n}" for n in summary.notes]) + "\n"
    level = f"{summary.confidence:.0%}"
    lines += ["", f"| criterion (1-5, mean [{level} bootstrap CI over items]) | " + " | ".join(ARMS) + " |"]
    lines.append("|---" * (len(ARMS) + 1) + "|")
    for c in CRITERIA:
        lines.append(f"| {c.zh} {c.en} | " + " | ".join(_interval(summary.criteria[a][c.key]) for a in ARMS) + " |")
    lines += ["", f"| {TUNED} vs | wins | ties | losses | win / tie / loss rate | sign test p (one-sided) |"]
    lines.append("|---|---|---|---|---|---|")
    for arm, p in summary.preferences.items():
        rates = " / ".join(f"{v:.0%}" for v in p.rates().values())
        lines.append(f"| {arm} | {p.wins} | {p.ties} | {p.losses} | {rates} | {p.p_value:.3g} |")
    alphas = ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in summary.agreement.items())
    lines += ["", f"Krippendorff's alpha (ordinal): {alphas}."]
    lines.append("Items per rater: " + ", ".join(f"{r} {n}" for r, n in summary.items_per_rater.items()) + ".")
    if summary.problems:
        lines.append(f"{len(summary.problems)} annotations could not be used (see the expert_review asset).")
    return "\n".join(lines) + "\n"


def save_review_chart(summary: ReviewSummary, path: Path) -> Path:
    """Left: mean score per criterion and arm with CI bars; right: tuned's win/tie/loss against each arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (scores, prefs) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.27
    colours = dict(zip(ARMS, ("tab:blue", "tab:orange", "tab:purple"), strict=True))
    for i, arm in enumerate(ARMS):
        cells = [summary.criteria[arm][c.key] for c in CRITERIA]
        xs = [n + (i - 1) * width for n in range(len(CRITERIA))]
        errors = [[s.mean - (s.low if s.low is not None else s.mean) for s in cells],
                  [(s.high if s.high is not None else s.mean) - s.mean for s in cells]]  # fmt: skip
        scores.bar(xs, [s.mean for s in cells], width, yerr=errors, capsize=3, label=arm, color=colours[arm])
    scores.set_xticks(range(len(CRITERIA)), [c.en for c in CRITERIA], rotation=15)
    scores.set_ylim(0, 6.2)
    scores.set_ylabel("mean score (1-5)")
    scores.set_title(f"expert scores, {summary.confidence:.0%} bootstrap CI")
    scores.legend(fontsize=8, loc="upper center", ncol=3)
    arms = list(summary.preferences)
    left = [0.0] * len(arms)
    for outcome, colour in (("win", "tab:green"), ("tie", "tab:gray"), ("loss", "tab:red")):
        shares = [summary.preferences[a].rates()[outcome] for a in arms]
        prefs.barh([f"{TUNED} vs {a}" for a in arms], shares, left=left, color=colour, label=outcome)
        left = [x + s for x, s in zip(left, shares, strict=True)]
    prefs.set_xlim(0, 1)
    prefs.set_title("item-level preference")
    prefs.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
