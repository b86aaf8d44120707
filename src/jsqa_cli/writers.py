"""Row writers for score tables: CSV, JSON Lines, or CSV on stdout, chosen by the output name. Every row is flushed
as it is written, so an interrupted run keeps every finished row; appending (``--resume``) first drops a torn last
line left by a kill mid-write."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


def output_format(path: str | os.PathLike) -> str:
    """``-`` → "csv" (stdout); ``*.csv`` → "csv"; ``*.jsonl`` → "jsonl"; anything else is a ValueError."""
    if str(path) == "-":
        return "csv"
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: output must end in .csv or .jsonl (or be - for stdout)")
    return fmt


def check_output(path: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse outputs that would lose work or cannot be written, with a one-line ValueError."""
    output_format(path)
    if str(path) == "-":
        if resume:
            raise ValueError("--resume needs an output file, not stdout (-)")
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p}: is a folder; give a file name ending in .csv or .jsonl")
    if p.exists() and not (resume or overwrite):
        raise ValueError(f"{p}: already exists; pass --resume to continue it or --overwrite to replace it")
    if not p.parent.exists() and str(p.parent):
        raise ValueError(f"{p}: folder {p.parent} does not exist")


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


class RowWriter:
    """Writes dict rows with fixed columns to an open text stream, flushing after each row."""

    def __init__(self, stream, columns: list[str], fmt: str, write_header: bool, close: bool):
        self.stream, self.columns, self.fmt, self._close = stream, list(columns), fmt, close
        if fmt == "csv":
            self._csv = csv.DictWriter(stream, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
            if write_header:
                self._csv.writeheader()
                stream.flush()

    def write(self, row: dict) -> None:
        clean = {k: _clean(row.get(k)) for k in self.columns}
        if self.fmt == "csv":
            self._csv.writerow({k: "" if v is None else v for k, v in clean.items()})
        else:
            self.stream.write(json.dumps(clean, ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._close:
            self.stream.close()
        else:
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _drop_torn_line(path: Path) -> None:
    """If ``path`` does not end with a newline (killed mid-row), cut it back to its last complete line."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def open_writer(path: str | os.PathLike, columns: list[str], append: bool = False, stdout=None) -> RowWriter:
    """A :class:`RowWriter` for ``path`` (format by extension; ``-`` is CSV on ``stdout``, default sys.stdout).

    ``append`` continues an existing file (header only if it is empty); otherwise the file is created anew.
    """
    fmt = output_format(path)
    if str(path) == "-":
        return RowWriter(stdout or sys.stdout, columns, fmt, write_header=True, close=False)
    p = Path(path)
    if append and p.exists():
        _drop_torn_line(p)
        if p.stat().st_size:
            header = _first_columns(p, fmt)
            if header is not None and header != list(columns):
                raise ValueError(
                    f"{p}: its columns ({', '.join(header)}) differ from this run's ({', '.join(columns)}); "
                    "cannot append"
                )
        stream = open(p, "a", newline="", encoding="utf-8")
        return RowWriter(stream, columns, fmt, write_header=stream.tell() == 0, close=True)
    stream = open(p, "w", newline="", encoding="utf-8")
    return RowWriter(stream, columns, fmt, write_header=True, close=True)


def _first_columns(path: Path, fmt: str) -> list[str] | None:
    """A CSV's header, or the keys of a JSONL file's first record (None when that line is not a JSON object)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        if fmt == "csv":
            return next(csv.reader(f), [])
        try:
            first = json.loads(f.readline())
        except json.JSONDecodeError:
            return None
    return list(first) if isinstance(first, dict) else None


def read_done_paths(path: str | os.PathLike) -> set[str]:
    """The ``path`` values already in a scores file (empty set if it does not exist); torn lines are ignored."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return set()
    done: set[str] = set()
    text = p.read_text(encoding="utf-8", errors="replace")
    # A torn last line (no newline: killed mid-row) does not count as done.
    lines = text[: text.rfind("\n") + 1].splitlines(keepends=True)
    if output_format(p) == "csv":
        reader = csv.DictReader(lines)
        if "path" not in (reader.fieldnames or []):
            raise ValueError(f"{p}: not a scores file (no 'path' column); cannot resume it")
        done.update(row["path"] for row in reader if row.get("path"))
    else:
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("path"):
                done.add(rec["path"])
    return done
