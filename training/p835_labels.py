"""P.835 labels (``sig``, ``bak``) and teachers' auxiliary targets (``aux_*``) for a simulated corpus split.

    python training/teachers.py data/recipe/corpus/main/train.csv -o data/recipe/corpus/main/train_teachers.csv
    python training/p835_labels.py data/recipe/corpus/main/train.csv data/recipe/corpus/main/train_teachers.csv \
        -o data/recipe/corpus/main/train_p835.csv

The output is the corpus CSV (same paths, same folder) with more columns, ready for ``jsqa finetune --heads``:

- ``sig`` (P.835 speech signal, 5 = not distorted): the simulation's own label of the clip's signal chain without
  its added noise (``sig_sim``: PESQ-WB of that chain against the clean reference, calibrated as the MOS label
  is, with the E-model's packet-loss and echo impairments), fused with DNSMOS SIG at ``sig_teacher_weight``.
  DNSMOS SIG alone is a weak teacher (it drops with noise that leaves the speech intact), so its weight is small.
- ``bak`` (P.835 background, 5 = not noticeable): a monotone map of the added noise's SNR onto DNSMOS BAK's scale
  (an isotonic fit of DNSMOS BAK against SNR over the split's noisy clips; a clip without added noise gets the
  fit's value at the highest SNR), fused with DNSMOS BAK itself at ``bak_teacher_weight``. DNSMOS BAK is a strong
  teacher; the SNR adds what the simulation knows for certain (which clips have no added noise at all, and the
  order of the noisy ones).
- ``aux_distillmos``, ``aux_dnsmos_ovrl``, ``aux_dnsmos_p808``: the teachers' overall scores, for auxiliary
  heads that are trained and then dropped (``jsqa_cli.model.drop_heads``); never fused into ``mos``.

DNSMOS is Microsoft's (CC BY 4.0): credited wherever a model trained on these labels is described.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import isotonic_regression

AUX = {"distillmos": "aux_distillmos", "dnsmos_ovrl": "aux_dnsmos_ovrl", "dnsmos_p808": "aux_dnsmos_p808"}


def snr_to_bak(snr: np.ndarray, bak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) fit of ``bak`` against ``snr``: (sorted SNRs, fitted BAK)."""
    order = np.argsort(snr, kind="stable")
    return np.asarray(snr, float)[order], isotonic_regression(np.asarray(bak, float)[order]).x


def p835_labels(
    corpus: pd.DataFrame, teachers: pd.DataFrame, sig_teacher_weight: float = 0.25, bak_teacher_weight: float = 0.5
) -> pd.DataFrame:
    """``corpus`` (simulate_mos.py's CSV: path, sig_sim, snr_db, ...) joined with ``teachers`` (teachers.py's CSV,
    matched on the file name relative to the corpus folder) → the corpus with ``sig``, ``bak`` and ``aux_*``."""
    for name, w in (("sig_teacher_weight", sig_teacher_weight), ("bak_teacher_weight", bak_teacher_weight)):
        if not 0 <= w <= 1:
            raise ValueError(f"{name} must be within [0, 1], not {w}")
    missing = [c for c in ("sig_sim", "snr_db") if c not in corpus.columns]
    if missing:
        raise ValueError(f"the corpus has no {missing[0]} column: draw it again with this simulate_mos.py")
    t = teachers[teachers["error"].isna()] if "error" in teachers.columns else teachers
    t = t.assign(key=t["path"].map(lambda p: Path(p).name)).drop_duplicates("key", keep="last").set_index("key")
    key = corpus["path"].map(lambda p: Path(p).name)
    out = corpus.copy()
    dn_sig, dn_bak = key.map(t["dnsmos_sig"]).to_numpy(float), key.map(t["dnsmos_bak"]).to_numpy(float)
    if np.isnan(dn_bak).all():
        raise ValueError("no corpus file has DNSMOS scores (label it with training/teachers.py --teachers dnsmos)")

    snr = out["snr_db"].to_numpy(float)
    fit_on = ~np.isnan(snr) & ~np.isnan(dn_bak)
    if fit_on.any():
        xs, ys = snr_to_bak(snr[fit_on], dn_bak[fit_on])
        bak_sim = np.where(np.isnan(snr), ys[-1], np.interp(snr, xs, ys))
    elif np.isnan(snr).all():  # a draw without added noise (e.g. codecs only): DNSMOS's BAK of its clips
        bak_sim = np.full(len(out), np.nanmedian(dn_bak))
    else:
        raise ValueError("no noisy corpus file has DNSMOS scores: score more of them (a smaller teacher_every)")
    out["bak_sim"] = bak_sim.round(3)
    out["bak"] = _fuse(bak_sim, dn_bak, bak_teacher_weight)
    out["sig"] = _fuse(out["sig_sim"].to_numpy(float), dn_sig, sig_teacher_weight)
    for column, aux in AUX.items():
        if column in t.columns:
            out[aux] = np.clip(key.map(t[column]).to_numpy(float), 1.0, 5.0).round(3)  # DNSMOS's fits can leave 1..5
    return out


def _fuse(own: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight)·own + weight·teacher, or own alone where the teacher has no score; in [1, 5]."""
    fused = np.where(np.isnan(teacher), own, (1 - weight) * own + weight * teacher)
    return np.clip(fused, 1.0, 5.0).round(3)


def label_draw(
    corpus_dir: str | os.PathLike,
    out: str | os.PathLike,
    teachers: Sequence[str] = ("dnsmos",),
    embeddings: bool = False,
    sig_teacher_weight: float = 0.25,
    bak_teacher_weight: float = 0.5,
    teacher_every: int = 1,
    val_teacher_every: int | None = None,
) -> None:
    """The recipe's ``labels`` stage for one corpus draw: for each of its splits, ``out/SPLIT_teachers.csv``
    (teachers.py, resumable), then ``out/SPLIT.csv`` (the corpus CSV with ``sig``, ``bak`` and ``aux_*``; paths
    relative to ``out``); with ``embeddings`` also ``out/SPLIT_embeddings.safetensors`` (DistillMOS's).

    ``teacher_every``: the teachers score every k-th file of the training and validation splits (``_every``: in a
    draw of groups, spread over the versions); ``val_teacher_every``: the validation split's own k (None: the
    same), 1 to validate the heads on fused labels for every file; DNSMOS alone scores every file of the test split
    (evaluation measures mos, sig and bak; aux_* targets are for training). On 2 CPU cores DNSMOS takes about
    0.7 s and DistillMOS 1.5 s a clip; the SNR-to-BAK fit needs a few hundred noisy clips, and a file without
    teacher scores keeps the simulation's sig and bak."""
    import teachers as teacher_scores

    if "dnsmos" not in teachers:
        raise ValueError("[labels] teachers must include dnsmos: sig and bak are fused with its scores")
    val_teacher_every = teacher_every if val_teacher_every is None else val_teacher_every
    for name, k in (("teacher_every", teacher_every), ("val_teacher_every", val_teacher_every)):
        if k < 1:
            raise ValueError(f"{name} must be 1 or more, not {k}")
    every = {"train": teacher_every, "val": val_teacher_every, "test": 1}
    corpus_dir, out = Path(corpus_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        src = corpus_dir / f"{split}.csv"
        corpus = pd.read_csv(src) if src.is_file() else None
        if corpus is None or corpus.empty:
            continue
        scores = out / f"{split}_teachers.csv"
        files = corpus["path"].iloc[_every(len(corpus), every[split], "group" in corpus)]
        test = split == "test"  # evaluation measures mos, sig and bak: the aux_* targets are for training only
        teacher_scores.label_files(
            [str(corpus_dir / p) for p in files], scores, ["dnsmos"] if test else teachers, embeddings and not test
        )
        df = p835_labels(corpus, pd.read_csv(scores), sig_teacher_weight, bak_teacher_weight)
        df["path"] = [os.path.relpath(corpus_dir / p, out) for p in df["path"]]
        df.to_csv(out / f"{split}.csv", index=False)
        if embeddings and not test:
            from jsqa_cli.labels import save_teacher_embeddings

            paths, array = teacher_scores.read_embeddings(scores)
            save_teacher_embeddings(out / f"{split}_embeddings.safetensors", paths, array)


def _every(n: int, k: int, groups: bool) -> np.ndarray:
    """Rows 0, k, 2k ... of ``n``; in a draw of groups (a reference and its degraded copies, one after another) the
    i-th pick moves on by i mod k rows, so that the picks do not all fall on the same version of every group (with
    4 versions and k = 4, every pick would be the clean reference)."""
    rows = np.arange(0, n, k)
    if groups:
        rows = rows + np.arange(len(rows)) % k
    return rows[rows < n]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", help="simulate_mos.py's CSV of one split")
    ap.add_argument("teachers", help="training/teachers.py's CSV for the same files")
    ap.add_argument("-o", "--output", required=True, help="CSV to write, in the corpus CSV's folder")
    ap.add_argument("--sig-teacher-weight", type=float, default=0.25, help="DNSMOS SIG's share of sig")
    ap.add_argument("--bak-teacher-weight", type=float, default=0.5, help="DNSMOS BAK's share of bak")
    args = ap.parse_args(argv)
    output = Path(args.output)
    if output.resolve().parent != Path(args.corpus).resolve().parent:
        sys.exit(f"Error: {output}: write it into the corpus CSV's folder (its paths are relative to that folder)")
    try:
        df = p835_labels(
            pd.read_csv(args.corpus), pd.read_csv(args.teachers), args.sig_teacher_weight, args.bak_teacher_weight
        )
    except (ValueError, KeyError, FileNotFoundError) as e:
        sys.exit(f"Error: {e}")
    df.to_csv(output, index=False)
    r = df[["mos", "sig", "bak"]].corr().round(2)
    print(f"{len(df)} rows → {output}; r(mos, sig) {r.loc['mos', 'sig']}, r(mos, bak) {r.loc['mos', 'bak']}")


if __name__ == "__main__":
    main()
