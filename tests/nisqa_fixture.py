"""A miniature NISQA corpus for tests: generated 48 kHz speech-like audio whose quality follows its MOS (more
noise, lower MOS), laid out like the real corpus with its real CSV columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from conftest import synth_speech

SR = 48_000
# db -> (files, conditions); SIM/LIVE training and validation sets number conditions per file, or have none (LIVE)
LAYOUT = {
    "NISQA_TRAIN_SIM": (8, "per_file"),
    "NISQA_TRAIN_LIVE": (4, None),
    "NISQA_VAL_SIM": (4, "per_file"),
    "NISQA_VAL_LIVE": (2, None),
    "NISQA_TEST_FOR": (6, 3),
    "NISQA_TEST_P501": (4, 2),
}
COLUMNS = [
    "db",
    "con",
    "file",
    "con_description",
    "filename_deg",
    "filename_ref",
    "source",
    "lang",
    "votes",
    "mos",
    "noi",
    "col",
    "dis",
    "loud",
    "noi_std",
    "col_std",
    "dis_std",
    "loud_std",
    "mos_std",
    "filepath_deg",
    "filepath_ref",
]


def degraded(mos: float, seconds: float, seed: int) -> np.ndarray:
    """Speech plus white noise at an SNR that rises with MOS (MOS 1 → -5 dB, MOS 5 → 35 dB)."""
    clean = synth_speech(seconds, SR, seed=seed, f0=110 + 10 * (seed % 7))
    snr_db = -5 + 10 * (mos - 1)
    noise = np.random.default_rng(seed + 1000).standard_normal(len(clean)).astype(np.float32)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    x = clean + noise
    return (0.9 * x / max(1.0, float(np.max(np.abs(x))) / 0.9)).astype(np.float32)


def build_nisqa_corpus(root: str | Path, seconds: tuple[float, float] = (1.0, 2.5), con_csv: bool = True) -> Path:
    """Write NISQA_corpus_file.csv, <DB>/<DB>_file.csv, <DB>/deg/*.wav (and <DB>/<DB>_con.csv for test sets)."""
    root = Path(root)
    rng = np.random.default_rng(0)
    rows, seed = [], 0
    for db, (n, cons) in LAYOUT.items():
        (root / db / "deg").mkdir(parents=True, exist_ok=True)
        db_rows = []
        for i in range(n):
            seed += 1
            if cons == "per_file":
                con = seed
            elif cons is None:
                con = np.nan
            else:
                con = i % cons + 1
            mos = float(np.clip(1.3 + 0.6 * (i % 6) + rng.uniform(-0.2, 0.2), 1.0, 5.0))
            name = f"c{seed:05d}_{db.lower()}_{i:02d}.wav"
            sf.write(str(root / db / "deg" / name), degraded(mos, rng.uniform(*seconds), seed), SR, subtype="PCM_16")
            db_rows.append(
                {
                    "db": db,
                    "con": con,
                    "file": seed,
                    "con_description": "generated",
                    "filename_deg": name,
                    "filename_ref": name.replace(".wav", "_ref.wav"),
                    "source": "synth",
                    "lang": "en",
                    "votes": 5,
                    "mos": round(mos, 3),
                    "noi": mos,
                    "col": mos,
                    "dis": mos,
                    "loud": mos,
                    "noi_std": 0.5,
                    "col_std": 0.5,
                    "dis_std": 0.5,
                    "loud_std": 0.5,
                    "mos_std": 0.6,
                    "filepath_deg": f"{db}/deg/{name}",
                    "filepath_ref": f"{db}/ref/{name}",
                }
            )
        pd.DataFrame(db_rows, columns=COLUMNS).to_csv(root / db / f"{db}_file.csv", index=False)
        if con_csv and isinstance(cons, int):
            df = pd.DataFrame(db_rows)
            con = df.groupby("con", as_index=False).agg(mos=("mos", "mean"))
            con["mos"] = (con["mos"] + 0.05).round(3)  # from all votes: not exactly the mean of the file MOS
            con.insert(1, "con_description", "generated")
            con.to_csv(root / db / f"{db}_con.csv", index=False)
        rows += db_rows
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "NISQA_corpus_file.csv", index=False)
    return root


def write_labelled_csv(
    path: str | Path, df: pd.DataFrame, relative_to: str | Path | None = None, path_column: str = "path"
) -> Path:
    """A labelled CSV (path, mos, condition) from a read_nisqa-style frame, paths relative to ``relative_to``."""
    path = Path(path)
    out = df[["path", "mos", "condition"]].copy()
    if relative_to is not None:
        out["path"] = [str(Path(p).relative_to(relative_to)) for p in out["path"]]
    out = out.rename(columns={"path": path_column})
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return path
