"""The CSV/XLSX round trip for teams without an annotation server.

`export_sheet` writes one row per item (prompt, answers A/B/C, empty rating columns); each rater fills in a
copy (or adds rows under their own rater code) and `import_sheet` reads the filled rows back. Column keys come
first in each header (`A_accuracy 准确性 (1-5)`), so headers may be translated after the key.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from finetune.review.criteria import CRITERIA, LETTERS, MAX_SCORE, MIN_SCORE, score_field
from finetune.review.judgements import Collected, make_judgement
from finetune.review.label_config import COMMENT, PROMPT_FIELD, RANKING, answer_field
from finetune.review.packet import Packet, ReviewError

RATER = "rater"
SCORE_KEYS = [score_field(letter, c.key) for letter in LETTERS for c in CRITERIA]
HEADERS = {
    "item": "item 编号",
    PROMPT_FIELD: "prompt 问题",
    **{answer_field(letter): f"{answer_field(letter)} 回答 {letter}" for letter in LETTERS},
    RATER: "rater 评审员代码 (e.g. R1, not a name)",
    **{
        score_field(letter, c.key): f"{score_field(letter, c.key)} {c.zh} ({MIN_SCORE}-{MAX_SCORE})"
        for letter in LETTERS
        for c in CRITERIA
    },  # fmt: skip
    RANKING: "ranking 排序 (best first, e.g. B>A>C)",
    COMMENT: "comment 评语",
}
SUFFIXES = (".csv", ".xlsx")


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in SUFFIXES:
        raise ReviewError(f"{path}: the review sheet must end in .csv or .xlsx, got {path.suffix or 'no suffix'!r}")


def export_sheet(packet: Packet, path: Path) -> Path:
    """Write the blinded sheet (no key, no arm names) as CSV (UTF-8 with BOM, so Excel reads Chinese) or XLSX."""
    _check_suffix(path)
    rows = [item.task_data() for item in packet.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with path.open("w", encoding="utf-8-sig", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(HEADERS.values())
            writer.writerows([[row.get(k, "") for k in HEADERS] for row in rows])
    else:
        _write_xlsx(rows, path)
    return path


def _write_xlsx(rows: list[dict[str, str]], path: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.datavalidation import DataValidation

    book = Workbook()
    sheet = book.active
    sheet.title = "review"
    sheet.append(list(HEADERS.values()))
    for row in rows:
        sheet.append([row.get(k, "") for k in HEADERS])
    keys = list(HEADERS)
    scores = DataValidation(type="whole", operator="between", formula1=str(MIN_SCORE), formula2=str(MAX_SCORE))
    scores.error = f"{MIN_SCORE}-{MAX_SCORE}"
    sheet.add_data_validation(scores)
    for col, key in enumerate(keys, start=1):
        letter = get_column_letter(col)
        wide = key == PROMPT_FIELD or key.startswith("answer_") or key == COMMENT
        sheet.column_dimensions[letter].width = 40 if wide else 14
        if key in SCORE_KEYS:
            scores.add(f"{letter}2:{letter}{len(rows) + 1}")
    for cells in sheet.iter_rows(min_row=1):
        for cell in cells:
            cell.alignment = Alignment(wrap_text=True, vertical="top")
    sheet.freeze_panes = "B2"
    book.save(path)


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, {column key: value}) for every data row."""
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as fh:
            table = list(csv.reader(fh))
    else:
        from openpyxl import load_workbook

        table = [
            list(r) for r in load_workbook(path, read_only=True, data_only=True).active.iter_rows(values_only=True)
        ]
    if not table:
        raise ReviewError(f"{path}: empty sheet; export one with `finetune review export latest --csv FILE`")
    keys = [str(h or "").split(" ", 1)[0] for h in table[0]]
    missing = [k for k in ("item", RATER, RANKING, *SCORE_KEYS) if k not in keys]
    if missing:
        raise ReviewError(f"{path}: header lacks columns {missing}; keep the exported header row (keys come first)")
    return [(n, dict(zip(keys, row, strict=False))) for n, row in enumerate(table[1:], start=2)]


def import_sheet(path: Path) -> Collected:
    """Read filled rows back; a bad row is reported with its line and column and the good rows are kept.

    Raises:
        ReviewError: the file is missing, has the wrong suffix or lacks the exported header.
    """
    _check_suffix(path)
    if not path.is_file():
        raise ReviewError(f"review sheet not found: {path}")
    collected = Collected()
    for line, row in _read_rows(path):
        blank = not str(row.get(RATER) or "").strip() and all(row.get(k) in (None, "") for k in SCORE_KEYS)
        if blank:
            collected.unanswered += 1
            continue
        try:
            collected.judgements.append(
                make_judgement(
                    str(row.get("item") or "").strip(),
                    str(row.get(RATER) or "").strip(),
                    row,
                    row.get(RANKING),
                    str(row.get(COMMENT) or ""),
                    source=path.name,
                    where=f"{path.name} line {line}",
                )
            )
        except ReviewError as err:
            collected.problems.append(str(err))
    return collected
