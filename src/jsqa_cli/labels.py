"""MOS tables: the NISQA corpus layout and labelled CSVs → one DataFrame shape (path, mos, condition[, db, group]),
with a CSV's P.835 ``sig`` and ``bak`` labels beside ``mos`` when it has them, and any other score columns asked for
(``finetune --heads``); and teachers' embeddings of the same files (``finetune --distill``).

Read by fine-tuning (training and validation sets) and by evaluation (test sets); imports nothing of either.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

NISQA_CORPUS_CSV = "NISQA_corpus_file.csv"
NISQA_TRAIN_DBS = ("NISQA_TRAIN_SIM", "NISQA_TRAIN_LIVE")
NISQA_VAL_DBS = ("NISQA_VAL_SIM", "NISQA_VAL_LIVE")
NISQA_TEST_DBS = ("NISQA_TEST_FOR", "NISQA_TEST_P501", "NISQA_TEST_LIVETALK")
PATH_COLUMNS = ("path", "file", "filepath_deg", "filepath")  # accepted names of the audio column in a CSV
CONDITION_COLUMNS = ("condition", "con")
P835_COLUMNS = ("sig", "bak")  # optional labels beside mos (ITU-T P.835: speech signal, background), 1..5


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None


def _mos_column(df: pd.DataFrame, source: Path, column: str = "mos", allow_empty: bool = False) -> pd.Series:
    mos = pd.to_numeric(df[column], errors="coerce")
    bad = mos.isna() | ~np.isfinite(mos)
    if allow_empty:  # an empty cell is a file without this label; text or inf is still a mistake
        bad &= df[column].notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{source}: row {i + 2}: {column} is not a number ({df[column].iloc[i]!r})")
    return mos.astype(float)


def _score_columns(df: pd.DataFrame, source: Path, names: Sequence[str]) -> dict[str, pd.Series]:
    """The columns of ``names`` that ``df`` has, as scores from 1 to 5 (empty cells: NaN, no label); columns it lacks
    are left out. Anything else in a cell is refused in one line naming the row."""
    out = {}
    for name in names:
        if name not in df.columns:
            continue
        values = pd.to_numeric(df[name], errors="coerce").astype(float)
        bad = (values.isna() & df[name].notna()) | ~(values.between(1, 5) | values.isna())
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            cell = df[name].iloc[i]
            cell = cell.item() if isinstance(cell, np.generic) else cell
            raise ValueError(f"{source}: row {i + 2}: {name} is not a score from 1 to 5 ({cell!r})")
        out[name] = values
    return out


def _condition_label(v) -> object:
    # a column with gaps reads as float: condition 3 must stay "3", not "3.0", to match <DB>_con.csv
    if pd.isna(v):
        return pd.NA
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _conditions(df: pd.DataFrame, column: str | None) -> pd.Series:
    """Condition labels as strings (missing: NA), the same whichever file they were read from."""
    if column is None:
        return pd.Series(pd.NA, index=df.index, dtype="object")
    return df[column].map(_condition_label).astype("object")


def read_nisqa(root: str | os.PathLike, dbs: Sequence[str], scores: Sequence[str] = ()) -> pd.DataFrame:
    """Files of the NISQA corpus databases ``dbs`` → DataFrame (path, mos, condition, db), in corpus order.

    Reads ``NISQA_corpus_file.csv`` at ``root`` (or, where it is missing, each ``<DB>/<DB>_file.csv``); paths
    come from ``filepath_deg`` relative to ``root``, conditions from ``con``. ``scores``: more columns to keep
    where the corpus has them (e.g. the dimensions ``noi``, ``col``, ``dis``, ``loud``), 1..5 or empty.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such NISQA corpus folder")
    dbs = list(dict.fromkeys(dbs))
    if not dbs:
        raise ValueError("choose at least one NISQA database (db)")
    corpus = root / NISQA_CORPUS_CSV
    if corpus.is_file():
        df, source = _read_csv(corpus), corpus
    else:
        per_db = [root / db / f"{db}_file.csv" for db in dbs]
        if not all(p.is_file() for p in per_db):
            missing = next(p for p in per_db if not p.is_file())
            raise FileNotFoundError(
                f"{root}: not a NISQA corpus (no {NISQA_CORPUS_CSV}, no {missing.relative_to(root)})"
            )
        df, source = (
            pd.concat(
                [
                    _read_csv(p).assign(db=p.parent.name) if "db" not in _read_csv(p).columns else _read_csv(p)
                    for p in per_db
                ],
                ignore_index=True,
            ),
            per_db[0],
        )
    missing_cols = [c for c in ("db", "filepath_deg", "mos") if c not in df.columns]
    if missing_cols:
        raise ValueError(
            f"{source}: missing column(s) {', '.join(missing_cols)} (has {', '.join(map(str, df.columns))})"
        )
    known = list(dict.fromkeys(df["db"].astype(str)))
    unknown = [db for db in dbs if db not in known]
    if unknown:
        raise ValueError(f"{source}: no database {unknown[0]} (has {', '.join(known)})")
    df = df[df["db"].astype(str).isin(dbs)].reset_index(drop=True)
    return pd.DataFrame(
        {
            "path": [str(root / p) for p in df["filepath_deg"].astype(str)],
            "mos": _mos_column(df, source),
            "condition": _conditions(df, "con" if "con" in df.columns else None),
            "db": df["db"].astype(str),
            **_score_columns(df, source, scores),
        }
    )


def read_nisqa_conditions(root: str | os.PathLike, dbs: Sequence[str]) -> pd.DataFrame | None:
    """Per-condition MOS from the test sets' ``<DB>/<DB>_con.csv`` (columns con, mos) → (db, condition, mos), or
    None when no chosen database has one (then per-condition MOS is the mean of the files' MOS)."""
    frames = []
    for db in dbs:
        path = Path(root).expanduser() / db / f"{db}_con.csv"
        if not path.is_file():
            continue
        df = _read_csv(path)
        if not {"con", "mos"} <= set(df.columns):
            raise ValueError(f"{path}: expected columns con and mos (has {', '.join(map(str, df.columns))})")
        frames.append(pd.DataFrame({"db": db, "condition": _conditions(df, "con"), "mos": _mos_column(df, path)}))
    return pd.concat(frames, ignore_index=True) if frames else None


def csv_list(csv: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list:
    """One labelled CSV or several (``--train``, ``--val``, ``evaluate --csv``) as a list."""
    return [] if csv is None else [csv] if isinstance(csv, (str, os.PathLike)) else list(csv)


def csv_names(csvs: Sequence[str | os.PathLike]) -> list[str]:
    """A short name for each CSV: its stem, or ``<folder>/<stem>`` where two CSVs share a stem."""
    stems = [Path(c).stem for c in csvs]
    return [Path(c).stem if stems.count(Path(c).stem) == 1 else f"{Path(c).parent.name}/{Path(c).stem}" for c in csvs]


def read_labelled_csv(csv: str | os.PathLike, scores: Sequence[str] = ()) -> pd.DataFrame:
    """A labelled CSV (columns path or file, mos, optional condition or con, optional group, optional P.835 sig and
    bak) → DataFrame (path, mos, condition[, sig, bak][, group][, scores]).

    Relative paths are resolved against the CSV's folder. ``sig``/``bak`` (or ``SIG``/``BAK``) may leave cells empty
    (NaN: a file without that label). ``group`` names versions of one clean reference (as
    ``training/simulate_mos.py --versions`` writes them), which ``finetune --rank-weight`` compares. ``scores``:
    more columns to keep where the CSV has them (``finetune --heads``), 1..5 or empty.
    """
    csv = Path(csv).expanduser()
    df = _read_csv(csv)
    path_col = next((c for c in PATH_COLUMNS if c in df.columns), None)
    mos_col = next((c for c in ("mos", "MOS") if c in df.columns), None)
    if path_col is None or mos_col is None:
        wanted = (("a path (or file) column", path_col), ("a mos column", mos_col))
        need = " and ".join(n for n, c in wanted if c is None)
        raise ValueError(f"{csv}: needs {need} (has {', '.join(map(str, df.columns)) or 'no columns'})")
    if df[path_col].isna().any():
        i = int(np.flatnonzero(df[path_col].isna().to_numpy())[0])
        raise ValueError(f"{csv}: row {i + 2}: empty {path_col}")
    paths = [p if p.is_absolute() else csv.parent / p for p in map(Path, df[path_col].astype(str))]
    out = pd.DataFrame(
        {
            "path": [str(p) for p in paths],
            "mos": _mos_column(df, csv, mos_col),
            "condition": _conditions(df, next((c for c in CONDITION_COLUMNS if c in df.columns), None)),
        }
    )
    for scale in P835_COLUMNS:
        column = next((c for c in (scale, scale.upper()) if c in df.columns), None)
        if column is not None:
            out[scale] = _mos_column(df, csv, column, allow_empty=True)
    if "db" in df.columns:
        out["db"] = df["db"].astype(str)
    if "group" in df.columns:  # qualified by the CSV, so that groups of two corpora never merge
        out["group"] = [pd.NA if pd.isna(g) else f"{csv}:{g}" for g in df["group"]]
    return out.assign(**_score_columns(df, csv, scores))


# ------------------------------------------------------------------------------------------ teacher embeddings
# A safetensors file: tensor "embeddings" (N, D) float32, and in its metadata "paths", a JSON list of the N audio
# files as the labels tables give them (read_labelled_csv's "path": the CSV's folder joined to a relative path),
# written absolute. Files are matched on path_key, so "data/../data/a.wav" from the current folder and its
# absolute path are one file.


def path_key(path: str | os.PathLike) -> str:
    """An audio path as it is matched between a labels table and a teacher-embeddings file: absolute, with
    ``~``, ``.`` and ``..`` resolved (symbolic links are not)."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def save_teacher_embeddings(path: str | os.PathLike, paths: Sequence[str | os.PathLike], array) -> Path:
    """Write a teacher's embeddings of ``paths`` ((N, D) ``array``, row i for ``paths[i]``) for ``finetune
    --distill``. ``paths`` as the labels tables give them (``read_labelled_csv(csv)["path"]``, or the ``path``
    column of ``training/teachers.py``'s output); they are stored absolute (path_key), so the file does not depend
    on the folder it is used from."""
    from safetensors.numpy import save_file

    path = Path(path).expanduser()
    emb = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    if emb.ndim != 2 or emb.shape[0] != len(paths) or not emb.shape[0]:
        raise ValueError(f"{path}: expected one embedding row per path ({len(paths)}), got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError(f"{path}: embeddings must be finite")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": emb}, str(path), metadata={"paths": json.dumps([path_key(p) for p in paths])})
    return path


def load_teacher_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """(paths, (N, D) float32 embeddings) of a file from :func:`save_teacher_embeddings` (a path written relative,
    by other tools, is taken from the current folder, as labels' relative paths are). Any problem is one line
    naming the file."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such teacher-embeddings file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta, names = f.metadata() or {}, set(f.keys())
            emb = f.get_tensor("embeddings") if "embeddings" in names else None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a safetensors file ({str(e).splitlines()[0]})") from None
    if emb is None or emb.ndim != 2:
        raise ValueError(f"{path}: needs an (N, D) tensor named 'embeddings' (has {', '.join(sorted(names))})")
    try:
        paths = json.loads(meta["paths"])
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"{path}: needs a JSON list of the audio paths in its metadata (key 'paths')") from None
    if not isinstance(paths, list) or len(paths) != emb.shape[0]:
        raise ValueError(f"{path}: {len(paths) if isinstance(paths, list) else 'no'} paths for {emb.shape[0]} rows")
    return [str(p) for p in paths], emb.astype(np.float32, copy=False)


def match_paths(wanted: Sequence[str | os.PathLike], have: Sequence[str | os.PathLike]) -> np.ndarray:
    """For each of ``wanted``, its row in ``have`` (path_key on both sides), or -1; the last row where ``have``
    repeats a file."""
    rows = {path_key(p): i for i, p in enumerate(have)}
    return np.array([rows.get(path_key(p), -1) for p in wanted], dtype=np.int64)
