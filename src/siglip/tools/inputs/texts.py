"""Texts to embed read from a file (`siglip embed --texts`): plain lines, a CSV/TSV column or a JSONL field.

Each text gets an id: the value of `id_column` when given, else its 1-based line number in the file (for a
CSV record spanning lines, the line it starts on), so that an output row can be traced back to its line.
Blank lines of a plain text file are left out (their line numbers are not reused). Every problem is a
one-line `DataError` naming the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...errors import DataError, InputNotFoundError

TEXT_COLUMNS = ("text", "caption")  # the column read when none is named: the first of these present
_CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_JSONL = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class TextRows:
    """The texts of a file, in file order, with their ids, and a digest of what was read (the file's bytes
    and the columns chosen), which tells a resumed job whether its journal still belongs to this input."""

    ids: list[str]
    texts: list[str]
    digest: str


def read_texts(
    path: str | os.PathLike, text_column: str | None = None, id_column: str | None = None
) -> TextRows:
    """The texts of `path`: one per non-blank line, or for `.csv`/`.tsv` (with a header line) and
    `.jsonl`/`.ndjson` files the `text_column` of each row (default: the first of TEXT_COLUMNS present).
    Ids are the `id_column` values (each must be unique) or line numbers."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"--texts '{path}' is a folder; give a text, CSV or JSONL file")
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise InputNotFoundError(f"--texts '{path}' does not exist") from err
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"'{path}' line {line}: not UTF-8 text") from err
    suffix = path.suffix.lower()
    if suffix in _CSV_DELIMITERS:
        rows = _csv_rows(path, content, _CSV_DELIMITERS[suffix], text_column, id_column)
    elif suffix in _JSONL:
        rows = _jsonl_rows(path, content, text_column, id_column)
    else:
        if text_column or id_column:
            raise DataError(
                f"'{path}' is read as plain lines (one text per line): --text-column and --id-column "
                "apply to .csv, .tsv, .jsonl and .ndjson files"
            )
        lines = content.splitlines()
        rows = ((str(n), line) for n, line in enumerate(lines, 1) if line.strip())
    ids, texts, seen = [], [], {}
    for row_id, text in rows:
        if row_id in seen:
            raise DataError(f"'{path}': id '{row_id}' appears twice (rows {seen[row_id]} and {len(ids) + 1})")
        seen[row_id] = len(ids) + 1
        ids.append(row_id)
        texts.append(text)
    if not texts:
        raise DataError(f"'{path}' holds no texts")
    digest = hashlib.sha256(data + json.dumps([text_column, id_column]).encode()).hexdigest()
    return TextRows(ids, texts, digest)


def _column(where: str, columns: list[str], name: str | None, option: str) -> str:
    """The column `name` (or, for the text column when None, the first of TEXT_COLUMNS) among `columns`;
    `where` names the file (and line) in the error."""
    if name is None:
        found = [c for c in TEXT_COLUMNS if c in columns]
        if not found:
            raise DataError(
                f"{where} has no column {' or '.join(TEXT_COLUMNS)} (columns: {', '.join(columns) or 'none'}); "
                "name one with --text-column"
            )
        return found[0]
    if name not in columns:
        raise DataError(f"{where} has no column '{name}' ({option}; columns: {', '.join(columns) or 'none'})")
    return name


def _csv_rows(
    path: Path, content: str, delimiter: str, text_column: str | None, id_column: str | None
) -> Iterator[tuple[str, str]]:
    reader = csv.reader(content.splitlines(keepends=True), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        text_name = _column(f"'{path}'", header, text_column, "--text-column")
        text_at = header.index(text_name)
        id_at = header.index(_column(f"'{path}'", header, id_column, "--id-column")) if id_column else None
        start = reader.line_num + 1
        for row in reader:
            if row:
                if len(row) != len(header):
                    raise DataError(
                        f"'{path}' line {start}: {len(row)} fields where the header has {len(header)}"
                    )
                yield (str(start) if id_at is None else row[id_at]), row[text_at]
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"'{path}' line {reader.line_num}: bad CSV ({err})") from err


def _jsonl_rows(
    path: Path, content: str, text_column: str | None, id_column: str | None
) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"'{path}' line {number}: not JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise DataError(f"'{path}' line {number}: a JSON object is needed, not {type(row).__name__}")
        name = _column(f"'{path}' line {number}", list(row), text_column, "--text-column")
        if not isinstance(row[name], str):
            raise DataError(f"'{path}' line {number}: '{name}' is {type(row[name]).__name__}, not a string")
        if id_column is None:
            yield str(number), row[name]
        elif id_column not in row:
            raise DataError(f"'{path}' line {number}: no field '{id_column}' (--id-column)")
        else:
            yield str(row[id_column]), row[name]
