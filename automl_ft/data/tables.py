"""Reading labeled text tables (CSV, TSV, JSONL, Parquet) and choosing their text and label columns."""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_ft.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".parquet": "parquet", ".pq": "parquet"}


def table_format(path: Path) -> str | None:
    return TABLE_SUFFIXES.get(path.suffix.lower())


def read_table(path: Path, original: dict[str, Any] | None = None) -> pd.DataFrame:
    """Read a table with every cell as a string (labels like ``01`` stay ``01``; empty cells stay empty strings).

    Args:
        original: when given, a JSONL/Parquet file's frame as read goes to ``original["frame"]``: its cells keep their own
            values (a list of labels, a number, None), which a multi-label or regression column needs.

    Raises:
        DataError: unknown extension, undecodable bytes (not UTF-8), a malformed file, or no rows.
    """
    import pandas as pd

    fmt = table_format(path)
    if fmt is None:
        raise DataError(f"{path}: unknown table type {path.suffix!r}; use .csv, .tsv, .jsonl or .parquet")
    try:
        if fmt == "parquet":
            df = _as_strings(pd.read_parquet(path), original)
        else:
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                line = raw[: e.start].count(b"\n") + 1
                raise DataError(f"{path}: not valid UTF-8 (byte {e.start}, line {line}); re-save the file as UTF-8") \
                    from None
            if not text.strip():
                raise DataError(f"{path}: the file is empty; it needs a header row and labeled rows")
            if fmt == "jsonl":
                df = _as_strings(pd.DataFrame.from_records(_jsonl_records(path, text)), original)
            else:
                df = _read_delimited(path, text, "\t" if fmt == "tsv" else ",")
    except DataError:
        raise
    except (ValueError, pd.errors.ParserError, OSError, ImportError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot read it as {fmt.upper()} ({msg}); check the file's format") from None
    df.columns = [str(c) for c in df.columns]
    if len(df) == 0:
        raise DataError(f"{path}: no data rows; it needs labeled rows under a header")
    return df


# Separators tried when a .csv/.tsv does not parse cleanly with its own: a ';'-separated "CSV" is what Excel
# writes in locales with a decimal comma, and tab-separated data is often saved as .csv.
SEPARATORS = {",": "commas", "\t": "tabs", ";": "semicolons", "|": "'|'"}
# Records looked at to decide the separator: enough to see a consistent field count, cheap on a 1M-row file.
SNIFF_RECORDS = 50
# Python's csv module refuses fields over 128 KiB by default; a long document in one cell is legitimate text.
csv.field_size_limit(2**31 - 1)


def _records(text: str, sep: str):
    """``(first line, fields)`` of every non-blank record (quoted fields may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    start = 1
    for row in reader:
        first, start = start, reader.line_num + 1
        if row and not (len(row) == 1 and not row[0].strip()):  # blank lines are skipped, as pandas does
            yield first, row


def _consistent(text: str, sep: str) -> bool:
    """True when ``sep`` splits the header into at least two fields and the first records into as many."""
    sample = list(itertools.islice(_records(text, sep), SNIFF_RECORDS))
    return bool(sample) and len(sample[0][1]) >= 2 and all(len(r) == len(sample[0][1]) for _, r in sample)


def sniff_separator(text: str, expected: str) -> str:
    """The separator of a delimited text: ``expected`` (``,`` for .csv, tab for .tsv) unless it gives an
    inconsistent field count where another of :data:`SEPARATORS` gives a consistent one of at least two fields.

    A consistency test rather than ``csv.Sniffer``'s character statistics, which pick a space for the SMS spam
    set saved with ``;`` (its texts hold more spaces than separators); a field count that matches the header on
    every record does not happen by accident, and the extension's separator wins whenever it works.
    """
    if _consistent(text, expected):
        return expected
    for sep in SEPARATORS:
        if sep != expected and _consistent(text, sep):
            return sep
    return expected


def _unique_names(header: list[str]) -> list[str]:
    """pandas' column names for a header: empty ones ``Unnamed: i``, repeats ``name.1``, ``name.2``..."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        name = name or f"Unnamed: {i}"
        base = name
        while name in seen:
            seen[base] += 1
            name = f"{base}.{seen[base]}"
        seen[name] = 0
        out.append(name)
    return out


def _read_delimited(path: Path, text: str, expected: str) -> pd.DataFrame:
    """A CSV/TSV as strings, every record checked against the header's field count.

    pandas turned a row with one extra field into an index (the text column then held the second field) and
    filled a short row with empty cells; both are refused here, naming the first bad lines.
    ``df.attrs["separator"]`` records the separator used when it is not the extension's.
    """
    import pandas as pd

    sep = sniff_separator(text, expected)
    records = _records(text, sep)
    try:
        first = next(records, None)
        if first is None:
            raise DataError(f"{path}: the file is empty; it needs a header row and labeled rows")
        header = first[1]
        rows: list[list[str]] = []
        bad: list[int] = []
        for line, row in records:
            if len(row) != len(header):
                bad.append(line)
            else:
                rows.append(row)
    except csv.Error as e:  # rare without strict mode; its message says what broke
        raise DataError(f"{path}: cannot read it as CSV ({e}); check the file's quoting") from None
    if bad:
        lines = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        raise DataError(f"{path}: {len(bad)} row(s) have a different number of fields than the header's "
                        f"{len(header)} (line {lines}); quote fields that contain {SEPARATORS[sep]}, close every "
                        "quote, or fix those rows")
    df = pd.DataFrame(rows, columns=_unique_names(header), dtype=object)
    if sep != expected:
        df.attrs["separator"] = sep
    return df


def _jsonl_records(path: Path, text: str) -> list[dict]:
    """One JSON object per line (blank lines skipped); a bad line is named by its number."""
    import json

    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {number} is not valid JSON ({e.msg}, column {e.colno}); fix or remove "
                            "it") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number} is a JSON {type(record).__name__}, not an object; each line "
                            "needs an object with a text and a label field")
        records.append(record)
    return records


def _as_strings(df: pd.DataFrame, original: dict[str, Any] | None = None) -> pd.DataFrame:
    """Every cell as a string, missing ones empty; columns holding objects or lists are listed in
    ``df.attrs["structured"]``, since their str() would pass for text (see :func:`check_plain`). With
    ``original``, ``original["frame"]`` is the frame as read (same column order), for callers that need the cells'
    own values."""
    if original is not None:
        original["frame"] = df
    structured = [str(c) for c in df.columns
                  if any(isinstance(v, (dict, list, tuple)) or getattr(v, "ndim", 0) > 0 for v in df[c].tolist())]
    df = df.astype(object).where(df.notna(), "")
    df = df.map(lambda v: v if isinstance(v, str) else str(v))
    df.attrs["structured"] = structured
    return df


def check_plain(df: pd.DataFrame, path: Path, *columns: str) -> None:
    """Refuse a text or label column of JSON objects or lists (JSONL, Parquet)."""
    for col in columns:
        if col in df.attrs.get("structured", ()):
            raise DataError(f"{path}: column {col!r} holds objects or lists, not plain values; flatten it "
                            "into text or numbers (or pass --text-column/--label-column)")


def match_column(columns: list[str], wanted: str) -> str | None:
    """The column called ``wanted``: exactly, else the one equal to it ignoring case and surrounding spaces
    (``Text`` for ``text``); None when there is none or more than one. ``tune`` and ``predict`` both use it, so
    a table that trains also predicts."""
    if wanted in columns:
        return wanted
    folded = [c for c in columns if c.strip().lower() == wanted.strip().lower()]
    return folded[0] if len(folded) == 1 else None


def choose_columns(df: pd.DataFrame, path: Path, text_column: str | None, label_column: str | None
                   ) -> tuple[str, str]:
    """Resolve the text and label columns.

    Explicit names must exist. Otherwise ``text`` and ``label`` are used when present; a missing one is
    auto-detected only when exactly one other column is left (e.g. Banking77's ``text,category``).

    Raises:
        DataError: a named column is missing, or the choice is ambiguous.
    """
    cols = list(df.columns)
    shown = ", ".join(cols[:12]) + (" ..." if len(cols) > 12 else "")

    def explicit(name: str, flag: str) -> str:
        found = match_column(cols, name)
        if found is None:
            raise DataError(f"{path}: no column {name!r} (columns: {shown}); pass {flag} with one of them")
        return found

    text = explicit(text_column, "--text-column") if text_column else match_column(cols, "text")
    label = explicit(label_column, "--label-column") if label_column else match_column(cols, "label")
    if text is not None and label is not None and text == label:
        raise DataError(f"{path}: the text and label columns are both {text!r}; pass different --text-column and "
                        "--label-column")
    if text is None and label is None:
        raise DataError(f"{path}: no 'text' or 'label' column (columns: {shown}); pass --text-column and "
                        "--label-column")
    if label is None:
        rest = [c for c in cols if c != text]
        if len(rest) != 1:
            raise DataError(f"{path}: no 'label' column and {len(rest)} candidates ({', '.join(rest[:8])}); "
                            "pass --label-column")
        label = rest[0]
    if text is None:
        rest = [c for c in cols if c != label]
        if len(rest) != 1:
            raise DataError(f"{path}: no 'text' column and {len(rest)} candidates ({', '.join(rest[:8])}); "
                            "pass --text-column")
        text = rest[0]
    return text, label


def choose_image_columns(df: pd.DataFrame, path: Path, image_column: str | None, label_column: str | None
                         ) -> tuple[str, str]:
    """Resolve the image-path and label columns of an image table.

    The image column is ``image_column`` or the column called ``image``; it is never guessed from the others
    (a wrong guess would read texts as file names and drop every row as unreadable). The label column is
    ``label_column``, ``label``, or the only other column.

    Raises:
        DataError: a named column is missing, there is no image column, or the label column is ambiguous.
    """
    cols = list(df.columns)
    shown = ", ".join(cols[:12]) + (" ..." if len(cols) > 12 else "")
    image = match_column(cols, image_column or "image")
    if image is None:
        what = f"no column {image_column!r}" if image_column else "no 'image' column"
        raise DataError(f"{path}: {what} (columns: {shown}); pass --image-column with the column of image paths")
    if label_column:
        label = match_column(cols, label_column)
        if label is None:
            raise DataError(f"{path}: no column {label_column!r} (columns: {shown}); pass --label-column with one "
                            "of them")
    else:
        label = match_column(cols, "label")
        if label is None:
            rest = [c for c in cols if c != image]
            if len(rest) != 1:
                raise DataError(f"{path}: no 'label' column and {len(rest)} candidates ({', '.join(rest[:8])}); "
                                "pass --label-column")
            label = rest[0]
    if label == image:
        raise DataError(f"{path}: the image and label columns are both {image!r}; pass different --image-column "
                        "and --label-column")
    return image, label
