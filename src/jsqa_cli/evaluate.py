"""How well do predicted MOS match subjective MOS? RMSE, MAE, PCC and SRCC per file and per condition, side by side
for several models with relative changes against the first, and the files that go with them. Where the labels also
hold P.835 ``sig`` and ``bak`` and a model predicts them, those scales are measured the same way, one block each.

    labelled files (NISQA db / any CSV) ──► scoring.score_files (the exact path of `jsqa score`)
        ──► predictions (one row per model × file) ──► metrics per scale (mos, sig, bak) × dataset × level
            (file, condition) × model
        ──► predictions.csv, metrics.json, scatter.png

Relative changes are *improvements* in percent, so that a positive number is always better:
RMSE and MAE: (reference − model) / reference · 100 (an error that shrinks is positive);
PCC and SRCC: (model − reference) / |reference| · 100 (a correlation that grows is positive).
The reference is the first model given (for the paper's table: the model trained from scratch).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from jsqa_cli import __version__
from jsqa_cli.labels import (
    NISQA_TEST_DBS,
    P835_COLUMNS,
    csv_list,
    csv_names,
    read_labelled_csv,
    read_nisqa,
    read_nisqa_conditions,
)

METRICS = ("rmse", "mae", "pcc", "srcc")
SCALES = ("mos", *P835_COLUMNS)  # what can be measured: a scale's labels in column S, predictions in S_pred
SCALE_TITLES = {"mos": "MOS", "sig": "SIG (P.835 speech signal)", "bak": "BAK (P.835 background)"}
LOWER_IS_BETTER = {"rmse": True, "mae": True, "pcc": False, "srcc": False}
PREDICTIONS_NAME = "predictions.csv"
METRICS_NAME = "metrics.json"
SCATTER_NAME = "scatter.png"
ALL = "all"  # the dataset name for all files together when several datasets are evaluated at once
MAX_COLOUR_GROUPS = 12  # the scatter plot colours by condition up to this many conditions, else by dataset
SIGN_CONVENTION = (
    "change_pct = improvement over the first model in percent (positive = better): "
    "RMSE/MAE (ref - model) / ref * 100; PCC/SRCC (model - ref) / |ref| * 100"
)


# ------------------------------------------------------------------------------------------------- metrics


def _pairs(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"predictions and labels differ in shape: {pred.shape} vs {true.shape}")
    keep = np.isfinite(pred) & np.isfinite(true)
    return pred[keep], true[keep]


def rmse(pred, true) -> float:
    """Root-mean-square error (NaN pairs ignored; NaN when there is nothing to compare)."""
    p, t = _pairs(pred, true)
    return float(np.sqrt(np.mean((p - t) ** 2))) if len(p) else math.nan


def mae(pred, true) -> float:
    """Mean absolute error."""
    p, t = _pairs(pred, true)
    return float(np.mean(np.abs(p - t))) if len(p) else math.nan


def pcc(pred, true) -> float:
    """Pearson correlation; NaN for fewer than two pairs or a constant side."""
    p, t = _pairs(pred, true)
    return float(pd.Series(p).corr(pd.Series(t), method="pearson")) if len(p) > 1 else math.nan


def srcc(pred, true) -> float:
    """Spearman rank correlation (ties get average ranks); NaN for fewer than two pairs or a constant side."""
    p, t = _pairs(pred, true)
    return float(pd.Series(p).corr(pd.Series(t), method="spearman")) if len(p) > 1 else math.nan


def compute_metrics(pred, true) -> dict:
    """{"n", "rmse", "mae", "pcc", "srcc"} over the finite pairs."""
    p, t = _pairs(pred, true)
    return {"n": int(len(p)), "rmse": rmse(p, t), "mae": mae(p, t), "pcc": pcc(p, t), "srcc": srcc(p, t)}


def condition_means(df: pd.DataFrame, condition_mos: pd.DataFrame | None = None, scale: str = "mos") -> pd.DataFrame:
    """Per-condition table (db?, condition, n_files, mos, mos_pred): means of the files' true and predicted MOS;
    for ``scale="sig"`` (or ``"bak"``) the same of columns sig and sig_pred.

    Conditions are grouped within their ``db`` when that column exists (NISQA numbers conditions per database).
    ``condition_mos`` (columns condition, mos, optionally db) overrides the true per-condition MOS, e.g. with
    NISQA's ``<DB>_con.csv``, where a condition's MOS comes from all its votes. Files without a condition, a
    prediction or a label are left out.
    """
    keys = [c for c in ("db", "condition") if c in df.columns]
    pred = f"{scale}_pred"
    d = df.dropna(subset=["condition", pred, scale])
    g = (
        d.groupby(keys, sort=True)
        .agg(n_files=(pred, "size"), **{scale: (scale, "mean"), pred: (pred, "mean")})
        .reset_index()
    )
    if scale == "mos" and condition_mos is not None and len(condition_mos):
        on = [k for k in keys if k in condition_mos.columns]
        cm = condition_mos[on + ["mos"]].drop_duplicates(on).rename(columns={"mos": "_mos_con"})
        g = g.merge(cm, on=on, how="left")
        g["mos"] = g["_mos_con"].where(g["_mos_con"].notna(), g["mos"])
        g = g.drop(columns="_mos_con")
    return g


def relative_change(value: float, reference: float, metric: str) -> float:
    """Improvement of ``value`` over ``reference`` in percent (positive = better, see the module docstring)."""
    if not (math.isfinite(value) and math.isfinite(reference)) or reference == 0:
        return math.nan
    if LOWER_IS_BETTER[metric]:
        return (reference - value) / abs(reference) * 100.0
    return (value - reference) / abs(reference) * 100.0


def metrics_table(
    predictions: pd.DataFrame,
    condition_mos: pd.DataFrame | None = None,
    scales_by_model: dict[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Long predictions (model, dataset, path, mos, mos_pred[, sig, sig_pred][, bak, bak_pred][, condition]) → one
    row per scale × dataset × level × model.

    Scales: each of SCALES with both columns, in that order. ``scales_by_model`` (model → scales it predicts)
    leaves out the rows of a model for a scale it does not predict (default: every model, every scale). Levels:
    ``file`` always, ``condition`` when a condition column has values. A dataset gets rows for the scales it has
    labels of; with several labelled on a scale, that scale also gets the dataset ``all``. Columns: scale, dataset,
    level, model, n, rmse, mae, pcc, srcc, and for every model after the first ``<metric>_change_pct`` against the
    first (NaN for the first, and where the first has no such row).
    """
    models = list(dict.fromkeys(predictions["model"]))
    datasets = list(dict.fromkeys(predictions["dataset"]))
    scales = [s for s in SCALES if s in predictions.columns and f"{s}_pred" in predictions.columns]
    parts = [(name, predictions[predictions["dataset"] == name]) for name in datasets]
    has_conditions = "condition" in predictions.columns and predictions["condition"].notna().any()
    rows = []
    for scale in scales:
        labelled = [(name, part) for name, part in parts if part[scale].notna().any()]
        for name, part in labelled + ([(ALL, predictions)] if len(labelled) > 1 else []):
            for level in ("file", "condition") if has_conditions else ("file",):
                for model in models:
                    if scales_by_model is not None and scale not in scales_by_model.get(model, ()):
                        continue
                    mp = part[part["model"] == model]
                    if level == "condition":
                        mp = condition_means(
                            mp if "db" in mp.columns else mp.assign(db=mp["dataset"]), condition_mos, scale
                        )
                    rows.append(
                        {
                            "scale": scale,
                            "dataset": name,
                            "level": level,
                            "model": model,
                            **compute_metrics(mp[f"{scale}_pred"], mp[scale]),
                        }
                    )
    table = pd.DataFrame(rows, columns=["scale", "dataset", "level", "model", "n", *METRICS])
    keys = list(zip(table["scale"], table["dataset"], table["level"]))
    for m in METRICS:
        ref = {k: v for k, model, v in zip(keys, table["model"], table[m]) if model == models[0]}
        table[f"{m}_change_pct"] = [
            math.nan if model == models[0] else relative_change(v, ref.get(k, math.nan), m)
            for k, model, v in zip(keys, table["model"], table[m])
        ]
    return table


# ------------------------------------------------------------------------------------------------ evaluate


@dataclass
class EvalResult:
    """What :func:`evaluate` produced; ``failed`` counts files (per model) that could not be scored."""

    predictions: pd.DataFrame
    metrics: pd.DataFrame
    models: list[dict]
    failed: int = 0
    scales: list[str] = field(default_factory=lambda: ["mos"])  # the scales measured (mos, then sig/bak)
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _label(model, taken: set[str]) -> str:
    base = str(getattr(model, "name", None) or model)
    label, k = base, 2
    while label in taken:
        label, k = f"{base}#{k}", k + 1
    taken.add(label)
    return label


def evaluate(
    models: Sequence,
    data: pd.DataFrame,
    out_dir: str | os.PathLike | None = None,
    *,
    condition_mos: pd.DataFrame | None = None,
    batch_size: int = 16,
    workers: int = 0,
    device: str = "auto",
    plot: bool = True,
    progress: bool = False,
    data_info: dict | None = None,
) -> EvalResult:
    """Score ``data``'s files with each model through :func:`jsqa_cli.scoring.score_files` and measure them.

    ``models``: names, folders, Hub ids or loaded JSQA models; the first is the reference for relative changes.
    ``data``: columns path, mos, optional sig, bak, condition, db, dataset (see :func:`load_eval_data`).
    Each scale of SCALES the data labels is measured for each model that predicts it (P.835 ``sig``/``bak``:
    models with those heads); a labelled scale a model does not predict is named in ``notes``.
    Files that fail to score are reported (``error`` in predictions.csv, ``failed`` in the result) and left out
    of the metrics; the other files are measured. With ``out_dir`` writes predictions.csv, metrics.json and
    (with matplotlib installed and ``plot``) scatter.png.
    """
    from jsqa_cli.distributed import resolve_device
    from jsqa_cli.model import load_model
    from jsqa_cli.scoring import reported_outputs, score_files

    if not len(models):
        raise ValueError("give at least one model to evaluate")
    if data is None or not len(data):
        raise ValueError("no labelled files to evaluate")
    data = data.reset_index(drop=True)
    if "dataset" not in data.columns:
        data = data.assign(dataset=data["db"] if "db" in data.columns else "data")
    dev = resolve_device(device)
    paths = [str(p) for p in data["path"]]
    labelled = [s for s in SCALES if s in data.columns and data[s].notna().any()]
    frames, infos, taken, scales_by_model, notes = [], [], set(), {}, []
    for m in models:
        model = load_model(m, device=dev) if isinstance(m, (str, os.PathLike)) else m
        label = _label(model if not isinstance(m, (str, os.PathLike)) else m, taken)
        predicted = reported_outputs(model)
        scales_by_model[label] = [s for s in labelled if s in predicted]
        skipped = [s for s in labelled if s not in predicted]
        if skipped:
            notes.append(
                f"{', '.join(skipped)} labels not evaluated for {label}: the model predicts only "
                f"{', '.join(predicted)} (it has no {'/'.join(skipped)} head)"
            )
        rows = score_files(paths, model, batch_size=batch_size, workers=workers, device=dev, progress=progress)
        meta = getattr(model, "metadata", {}) or {}
        infos.append(
            {
                "label": label,
                "name": str(getattr(model, "name", m)),
                "preset": model.config.preset,
                "parameters": model.num_parameters,
                "stage": meta.get("stage"),
                "init": (meta.get("init") or {}).get("kind") if isinstance(meta.get("init"), dict) else None,
            }
        )
        frame = data.assign(
            model=label,
            **{
                f"{s}_pred": pd.to_numeric(rows[s], errors="coerce").to_numpy() if s in predicted else math.nan
                for s in labelled
            },
            segments=rows["segments"].to_numpy(),
            duration_s=rows["duration_s"].to_numpy(),
            error=rows["error"].fillna("").astype(str).to_numpy(),
        )
        frames.append(frame)
    scales = [s for s in labelled if any(s in v for v in scales_by_model.values())]
    cols = [
        "model",
        "dataset",
        *[c for c in ("db", "condition") if c in data.columns],
        "path",
        *[c for s in scales for c in (s, f"{s}_pred")],
        "segments",
        "duration_s",
        "error",
    ]
    predictions = pd.concat(frames, ignore_index=True)[cols]
    failed = int((predictions["error"] != "").sum())
    table = metrics_table(predictions, condition_mos, scales_by_model)
    result = EvalResult(predictions, table, infos, failed, scales, notes=notes)
    if failed:
        result.notes.append(
            f"{failed} file score(s) failed and are left out of the metrics "
            f"(see the error column of {PREDICTIONS_NAME})"
        )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        predictions.to_csv(out / PREDICTIONS_NAME, index=False)
        result.files["predictions"] = out / PREDICTIONS_NAME
        (out / METRICS_NAME).write_text(
            json.dumps(metrics_document(result, data_info), indent=2, allow_nan=False, default=str) + "\n"
        )
        result.files["metrics"] = out / METRICS_NAME
        if plot:
            png, note = scatter_plot(predictions, out / SCATTER_NAME)
            if png is not None:
                result.files["scatter"] = png
            if note:
                result.notes.append(note)
    return result


def _finite_or_none(x):
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def metrics_document(result: EvalResult, data_info: dict | None = None) -> dict:
    """The content of metrics.json (NaN written as null)."""
    records = [{k: _finite_or_none(v) for k, v in r.items()} for r in result.metrics.to_dict(orient="records")]
    return {
        "jsqa_version": __version__,
        "models": result.models,
        "reference_model": result.models[0]["label"],
        "scales": result.scales,
        "sign_convention": SIGN_CONVENTION,
        "data": data_info or {},
        "failed": result.failed,
        "metrics": records,
    }


# --------------------------------------------------------------------------------------------------- data


def load_eval_data(
    *,
    nisqa_root: str | os.PathLike | None = None,
    dbs: Sequence[str] = (),
    csv: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """Labelled files from a NISQA corpus (``dbs``, default the three test sets) or from one or more CSVs.

    Each CSV is its own dataset, named by its file stem (``<folder>/<stem>`` where two stems are the same), so
    that metrics come per CSV and, with several, for all of them together.
    Returns (data with path, mos, condition?, db?, dataset; per-condition MOS from NISQA ``<DB>_con.csv`` or
    None; a description of the data for metrics.json).
    """
    csvs = csv_list(csv)
    if (nisqa_root is None) == (not csvs):
        raise ValueError("give either --nisqa-root (with --db) or --csv, not both or neither")
    if csvs:
        paths = [Path(c) for c in csvs]
        if len(set(map(str, paths))) < len(paths):
            raise ValueError(f"{next(str(c) for c in paths if paths.count(c) > 1)}: given twice as --csv")
        data = pd.concat(
            [read_labelled_csv(c).assign(dataset=n) for c, n in zip(paths, csv_names(paths))], ignore_index=True
        )
        info = {"csv": [str(c) for c in paths] if len(paths) > 1 else str(paths[0]), "files": len(data)}
        return data, None, info
    dbs = list(dbs) or list(NISQA_TEST_DBS)
    data = read_nisqa(nisqa_root, dbs)
    return (
        data.assign(dataset=data["db"]),
        read_nisqa_conditions(nisqa_root, dbs),
        {"nisqa_root": str(nisqa_root), "db": dbs, "files": len(data)},
    )


# -------------------------------------------------------------------------------------------------- output


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _fmt_change(x) -> str:
    if x is None or not math.isfinite(x):
        return ""
    colour = "green" if x > 0 else "red" if x < 0 else "white"
    return f"[{colour}]{x:+.1f}%[/]"


def rich_table(metrics: pd.DataFrame, title: str | None = None):
    """The metrics as a rich Table; with several models, one Δ% column per metric (positive = better). With
    several scales (MOS and P.835 SIG/BAK), one table per scale, titled by it, in a rich Group."""
    scales = list(dict.fromkeys(metrics["scale"])) if "scale" in metrics.columns else []
    if len(scales) <= 1:
        return _scale_table(metrics, title, caption=True)
    from rich.console import Group

    parts = [metrics[metrics["scale"] == scale] for scale in scales]
    compared = [k for k, part in enumerate(parts) if part["model"].nunique() > 1]  # tables with Δ% columns
    return Group(
        *(
            _scale_table(
                part,
                f"{title}: {SCALE_TITLES.get(scale, scale)}" if title else SCALE_TITLES.get(scale, scale),
                caption=bool(compared) and k == compared[-1],  # the Δ% note once, under the last table with Δ%
            )
            for k, (scale, part) in enumerate(zip(scales, parts))
        )
    )


def _scale_table(metrics: pd.DataFrame, title: str | None, caption: bool):
    from rich.table import Table

    several = metrics["model"].nunique() > 1
    table = Table(
        title=title,
        caption=("Δ%: improvement over the first model (positive = better)" if several and caption else None),
    )
    for col in ("dataset", "level", "model"):
        table.add_column(col)
    table.add_column("n", justify="right")
    for m in METRICS:
        table.add_column(m.upper(), justify="right")
        if several:
            table.add_column(f"Δ{m.upper()}", justify="right")
    previous = None
    for r in metrics.to_dict(orient="records"):
        key = (r["dataset"], r["level"])
        if previous is not None and key != previous:
            table.add_section()
        previous = key
        cells = [r["dataset"], r["level"], r["model"], str(r["n"])]
        for m in METRICS:
            cells.append(_fmt(r[m]))
            if several:
                cells.append(_fmt_change(r[f"{m}_change_pct"]))
        table.add_row(*cells)
    return table


def scatter_plot(predictions: pd.DataFrame, path: str | os.PathLike) -> tuple[Path | None, str | None]:
    """Predicted vs. true MOS per file, one panel per model, identity line; one colour per condition (one dataset
    with at most MAX_COLOUR_GROUPS conditions), else per dataset. P.835 SIG and BAK, where predictions has them,
    get a row of panels each below MOS. Returns (path, None), or (None, note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "scatter plot skipped: matplotlib is not installed (pip install 'jsqa[plot]')"
    scales = [s for s in SCALES if s in predictions.columns and f"{s}_pred" in predictions.columns]
    d = predictions[predictions["mos_pred"].notna()]
    group = "dataset"  # several datasets number their conditions separately: colour by dataset then
    if d["dataset"].nunique() == 1 and "condition" in d.columns and 0 < d["condition"].nunique() <= MAX_COLOUR_GROUPS:
        group = "condition"
    models = list(dict.fromkeys(predictions["model"]))
    fig, axes = plt.subplots(
        len(scales), len(models), figsize=(4.2 * len(models), 4.2 * len(scales)), squeeze=False, sharey=True
    )
    groups = sorted(d[group].fillna("none").astype(str).unique())
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    for row, scale in zip(axes, scales):
        name, pred = SCALE_TITLES.get(scale, scale).split()[0], f"{scale}_pred"
        for ax, model in zip(row, models):
            md = d[d["model"] == model]
            for k, g in enumerate(groups):
                gd = md[md[group].fillna("none").astype(str) == g]
                ax.scatter(gd[scale], gd[pred], s=10, alpha=0.7, color=cmap(k % cmap.N), label=g)
            ax.plot([1, 5], [1, 5], color="black", linewidth=0.8, linestyle="--")
            m = compute_metrics(md[pred], md[scale])
            ax.set(
                xlim=(1, 5),
                ylim=(1, 5),
                xlabel=f"true {name}",
                aspect="equal",
                title=f"{model}\nPCC {_fmt(m['pcc'])}  RMSE {_fmt(m['rmse'])}"
                if m["n"] or scale == "mos"
                else f"{model}\nno {name} predictions",
            )
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
        row[0].set_ylabel(f"predicted {name}")
    if 1 < len(groups) <= 20:
        axes[0][-1].legend(title=group, fontsize=7, title_fontsize=8, loc="upper left", markerscale=1.5)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path, None
