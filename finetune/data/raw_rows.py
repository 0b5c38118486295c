"""The rows of one raw file (JSONL, JSON, CSV, Parquet), good or bad, each with its line.

Every reader yields `Parsed(line, value, error, text)` per row and raises IngestError only when no
row can be read at all (the file cannot be opened, a Parquet footer is broken). The text encoding is
sniffed (UTF-8 with or without BOM, UTF-16/32 with a BOM or told by its NUL bytes): a UTF-16 export
from Windows is read, not quarantined whole.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from finetune.data import raw_json
from finetune.data.raw_files import SUPPORTED_SUFFIXES, IngestError, open_regular, sniff_encoding

CHUNK_ROWS = 10_000  # Parquet is read in batches so a large file never sits in memory whole
Parsed = raw_json.Parsed


def _jsonl_rows(fh: IO[bytes], encoding: str) -> Iterator[Parsed]:
    if encoding.startswith("utf-8"):  # byte lines: an invalid UTF-8 line is one bad row, not a bad file
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                yield raw_json.parse_line(raw, lineno)
        return
    for lineno, text in enumerate(io.TextIOWrapper(fh, encoding=encoding, errors="replace"), start=1):
        if text.strip():
            yield raw_json.parse_line(text, lineno)


def _codec(encoding: str) -> str:
    return "utf-8-sig" if encoding.startswith("utf-8") else encoding


def _errors(encoding: str) -> str:
    # surrogateescape keeps bytes that are not UTF-8 visible, so only the row holding them is quarantined.
    return "surrogateescape" if encoding.startswith("utf-8") else "replace"


def _json_rows(fh: IO[bytes], encoding: str) -> Iterator[Parsed]:
    yield from raw_json.iter_document(fh.read().decode(_codec(encoding), _errors(encoding)))


def _csv_rows(fh: IO[bytes], encoding: str) -> Iterator[Parsed]:
    # The csv module, not pandas: it reports each row's line and lets one malformed row fail alone.
    text = io.TextIOWrapper(fh, encoding=_codec(encoding), errors=_errors(encoding), newline="")
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # the 128 KB default is shorter than long answers
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield Parsed(1, None, f"invalid CSV header: {exc}", "")
        return
    end = reader.line_num
    while True:
        start = end + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            end = reader.line_num
            yield Parsed(start, None, f"invalid CSV: {exc}", "")
            continue
        end = reader.line_num
        if fields:
            yield _csv_row(header, fields, start, end)


def _csv_row(header: list[str], fields: list[str], start: int, end: int) -> Parsed:
    text = ",".join(fields).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if len(fields) != len(header):
        spans = f" (the row spans lines {start}-{end}: an unclosed quote?)" if end > start else ""
        return Parsed(start, None, f"expected {len(header)} fields as in the header, got {len(fields)}{spans}", text)
    if any(raw_json.UNDECODABLE.search(f) for f in fields):
        return Parsed(start, None, "invalid UTF-8 bytes in this row", text)
    return Parsed(start, dict(zip(header, fields, strict=True)), None, text)


def _parquet_rows(fh: IO[bytes]) -> Iterator[Parsed]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(fh)
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"cannot read Parquet file: {exc}") from None
    row = 1
    try:
        for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
            for item in batch.to_pylist():
                yield Parsed(row, item, None, "")
                row += 1
    except (pa.ArrowException, OSError) as exc:
        yield Parsed(row, None, f"cannot read Parquet rows from row {row} on: {exc}", "")


def file_rows(path: Path, stats: dict[str, Any]) -> Iterator[Parsed]:
    """Every row of one file, good or bad; `stats` gets the encoding when it is not UTF-8.

    Raises:
        IngestError: no row can be read (see the module docstring).
    """
    suffix = next(s for s in SUPPORTED_SUFFIXES if path.name.lower().endswith(s))
    with open_regular(path) as fh:
        if suffix == ".parquet":
            yield from _parquet_rows(fh)
            return
        encoding = sniff_encoding(fh.read(4096))
        fh.seek(0)
        if not encoding.startswith("utf-8"):
            stats["encoding"] = encoding
        reader = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows}[suffix]
        yield from reader(fh, encoding)
