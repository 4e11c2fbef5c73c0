"""Texts to embed read from a file (`siglip embed --texts`): plain lines, a CSV/TSV column or a JSONL field.

Each text gets an id: the value of `id_column` when given, else its 1-based line number in the file (for a
CSV record spanning lines, the line it starts on), so that an output row can be traced back to its line.
Blank lines of a plain text file are left out (their line numbers are not reused). CSV, TSV and JSONL files
are read by `read_rows`, as pairs files are. Every problem is a one-line `DataError` naming the file and,
where there is one, the line.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import DataError, InputNotFoundError
from .data import PAIRS_SUFFIXES, read_rows

TEXT_COLUMNS = ("text", "caption")  # the column read when none is named: the first of these present


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
    """The texts of `path`: one per non-blank line, or for `.csv`/`.tsv` (with a header line) and `.jsonl`
    files the `text_column` of each row (default: the first of TEXT_COLUMNS present). Ids are the
    `id_column` values (each must be unique) or line numbers."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"--texts '{path}' is a folder; give a text, CSV or JSONL file")
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise InputNotFoundError(f"--texts '{path}' does not exist") from err
    if path.suffix in PAIRS_SUFFIXES:  # as `read_rows` tells them apart
        rows = _column_rows(path, text_column, id_column)
    elif text_column or id_column:
        raise DataError(
            f"{path} is read as plain lines (one text per line): --text-column and --id-column apply to "
            f"{', '.join(PAIRS_SUFFIXES)} files"
        )
    else:
        try:
            lines = data.decode("utf-8-sig").splitlines()
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise DataError(f"{path} line {line}: not UTF-8 text; save it as UTF-8") from err
        rows = [(str(n), line) for n, line in enumerate(lines, 1) if line.strip()]
    ids, texts, seen = [], [], {}
    for row_id, text in rows:
        if row_id in seen:
            raise DataError(f"{path}: id '{row_id}' appears twice (rows {seen[row_id]} and {len(ids) + 1})")
        seen[row_id] = len(ids) + 1
        ids.append(row_id)
        texts.append(text)
    if not texts:
        raise DataError(f"{path} holds no texts")
    digest = hashlib.sha256(data + json.dumps([text_column, id_column]).encode()).hexdigest()
    return TextRows(ids, texts, digest)


def _column_rows(path: Path, text_column: str | None, id_column: str | None) -> list[tuple[str, str]]:
    """(id, text) of each row of a CSV, TSV or JSONL file."""
    rows = read_rows(path)
    found = []
    for line, row in rows:
        name = text_column or next((c for c in TEXT_COLUMNS if c in row), None)
        for column, option in ((name, "--text-column"), (id_column, "--id-column")):
            if column is not None and column not in row:
                raise DataError(
                    f"{path} line {line} has no column '{column}' ({option}; columns: {', '.join(row)})"
                )
        if name is None:
            raise DataError(
                f"{path} line {line} has no column {' or '.join(TEXT_COLUMNS)} (columns: {', '.join(row)}); "
                "name one with --text-column"
            )
        text = row[name]
        if not isinstance(text, str):  # JSON of another type, or a CSV row short of fields (None)
            raise DataError(
                f"{path} line {line}: '{name}' is {'missing' if text is None else type(text).__name__}, not text"
            )
        found.append((str(line) if id_column is None else str(row[id_column]), text))
    return found
