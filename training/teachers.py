"""Teacher scores for the recipe's clips: DistillMOS and DNSMOS, as extra labels beside the simulation's own.

    pip install -e ".[teachers]"
    python training/teachers.py data/mos/train.csv -o data/mos/teachers.csv        # every teacher
    python training/teachers.py clips/ -o teachers.csv --teachers dnsmos          # one teacher, a folder

Teachers, and why their weights may be used here (labelling only; nothing of theirs ships):
- ``distillmos``: DistillMOS (B. Stahl, H. Gamper, "Distillation and pruning for scalable self-supervised
  representation-based speech quality assessment", ICASSP 2025), ``pip install distillmos``, MIT licence.
  One column, ``distillmos`` (overall MOS, 1-5); with ``--embeddings`` also ``distillmos_embedding``: its pooled
  200-dimensional representation (the attention pool's output, averaged over its 7.68 s segments), written as
  space-separated numbers, for representation distillation (``jsqa finetune --distill``).
- ``dnsmos``: DNSMOS P.835 and P.808 (C. K. A. Reddy, V. Gopal, R. Cutler, "DNSMOS P.835: a non-intrusive
  perceptual objective speech quality metric to evaluate noise suppressors", ICASSP 2022), Microsoft's ONNX models
  under CC BY 4.0, through ``pip install speechmos`` (MIT). Columns ``dnsmos_sig`` (speech signal), ``dnsmos_bak``
  (background), ``dnsmos_ovrl`` (overall), ``dnsmos_p808``.

Rows are appended as they finish, so an interrupted run continues where it stopped (files already in the output
are skipped). Audio is read with jsqa's own loader (any format, rate and channel count → 16 kHz mono).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jsqa_cli.audio import SAMPLE_RATE, AudioError, find_audio, load_audio
from jsqa_cli.writers import open_writer, read_done_paths

TEACHERS = ("distillmos", "dnsmos")
COLUMNS = {"distillmos": ("distillmos",), "dnsmos": ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")}
EMBEDDING = "distillmos_embedding"
INSTALL_HINT = "pip install -e '.[teachers]'"


class DistillMOS:
    """DistillMOS (MIT): the packaged weights, loaded once; any length (it windows long inputs itself). With
    ``embeddings``, also its pooled representation: the input of the last linear layer, caught by a hook."""

    def __init__(self, embeddings: bool = False):
        import torch
        from distillmos import ConvTransformerSQAModel

        self._torch = torch
        self.model = ConvTransformerSQAModel().eval()
        self.embeddings, self._caught = embeddings, []
        if embeddings:
            last = self.model.transformer_pool_attn.pool.linear3
            last.register_forward_pre_hook(lambda module, args: self._caught.append(args[0].detach()))

    def __call__(self, wav: np.ndarray) -> dict:
        self._caught.clear()
        with self._torch.inference_mode():
            out = {"distillmos": float(self.model(self._torch.from_numpy(wav)[None]).reshape(-1)[0])}
        if self.embeddings:  # (segments, 200) for one file: their mean
            out[EMBEDDING] = self._caught[-1].mean(0).numpy()
        return out


# DNSMOS repeats a clip shorter than its 9.01 s window until it is longer, then averages windows every 1 s: a
# 6 s clip becomes 12 s and 4 windows that are shifts of the same audio. Repeated to exactly 10 s instead, it is
# scored on the first of those windows alone: the same audio, a quarter of the time (about 0.7 s a clip on a
# busy core instead of 2.4; scores within about 0.1). Clips of 10 s and more are scored as DNSMOS does.
SHORT = 10


class DNSMOS:
    """DNSMOS P.835 (SIG, BAK, OVRL) and P.808 (CC BY 4.0, Microsoft), both ONNX sessions opened once."""

    def __init__(self):
        import onnxruntime as ort
        from speechmos import dnsmos

        models = Path(dnsmos.__file__).parent / "dnsmos_models"
        one = ort.SessionOptions()  # one thread each: on a busy machine ONNX's default (every core) thrashes;
        one.intra_op_num_threads = one.inter_op_num_threads = 1  # run several processes for more throughput
        # speechmos's DNSMOS(...) opens both sessions with ONNX's defaults; its attributes set here instead open
        # each once, with the options above
        self.model = dnsmos.DNSMOS.__new__(dnsmos.DNSMOS)
        self.model.primary_model_path = str(models / "sig_bak_ovr.onnx")
        self.model.onnx_sess = ort.InferenceSession(self.model.primary_model_path, one)
        self.model.p808_onnx_sess = ort.InferenceSession(str(models / "model_v8.onnx"), one)

    def __call__(self, wav: np.ndarray) -> dict:
        wav = np.clip(wav, -1.0, 1.0)
        if len(wav) < SHORT * SAMPLE_RATE:  # repeated to 10 s: DNSMOS's first 9.01 s window, once (see SHORT)
            wav = np.resize(wav, SHORT * SAMPLE_RATE)
        r = self.model(wav, SAMPLE_RATE, False)
        return {
            "dnsmos_sig": float(r["sig_mos"]),
            "dnsmos_bak": float(r["bak_mos"]),
            "dnsmos_ovrl": float(r["ovrl_mos"]),
            "dnsmos_p808": float(r["p808_mos"]),
        }


def load_teachers(names: Sequence[str], embeddings: bool = False) -> dict:
    """Teacher name → scorer; a one-line error when a name is unknown or its package is missing."""
    unknown = [n for n in names if n not in TEACHERS]
    if unknown:
        raise ValueError(f"unknown teacher {unknown[0]!r}: choose from {', '.join(TEACHERS)}")
    made = {}
    for name in names:
        try:
            made[name] = DistillMOS(embeddings) if name == "distillmos" else DNSMOS()
        except ImportError as e:
            raise RuntimeError(f"teacher {name} needs its package ({e.name} is missing): {INSTALL_HINT}") from None
    return made


def _paths(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Audio files from files, folders, and CSVs with a ``path`` column (paths relative to the CSV's folder)."""
    out: list[str] = []
    for item in map(Path, inputs):
        if item.suffix.lower() == ".csv":
            import pandas as pd

            df = pd.read_csv(item)
            if "path" not in df.columns:
                raise ValueError(f"{item}: no 'path' column")
            out += [str(p if Path(p).is_absolute() else item.parent / p) for p in df["path"]]
        else:
            out += [str(p) for p in find_audio([item])]
    return out


def label_files(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    teachers: Sequence[str] = TEACHERS,
    embeddings: bool = False,
) -> int:
    """Score every audio file of ``inputs`` with each teacher into the CSV ``output`` (path + one column per
    teacher score, ``error`` for a file that cannot be read); files already in ``output`` are skipped. Returns the
    number of rows written by this call. ``embeddings``: DistillMOS's pooled representation too (EMBEDDING)."""
    if embeddings and "distillmos" not in teachers:
        raise ValueError("--embeddings are DistillMOS's: add distillmos to --teachers")
    paths = _paths(inputs)
    output = Path(output)
    columns = ["path", *[c for t in teachers for c in COLUMNS[t]], *([EMBEDDING] if embeddings else []), "error"]
    if output.is_file() and output.stat().st_size:
        with open(output, newline="") as f:
            header = next(csv.reader(f), [])
        if header != columns:
            raise ValueError(f"{output}: written with other teachers ({header}); choose a new output")
    done = read_done_paths(output)
    todo = [p for p in paths if p not in done]
    if not todo:
        return 0
    scorers = load_teachers(teachers, embeddings)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open_writer(output, columns, append=True) as writer:  # a row flushed as each file finishes
        for path in todo:
            row = {"path": path}
            try:
                wav, _ = load_audio(path)
                for scorer in scorers.values():
                    row.update({k: _cell(v) for k, v in scorer(wav).items()})
            except AudioError as e:
                row["error"] = str(e)
            writer.write(row)
    return len(todo)


def _cell(value) -> float | str:
    if isinstance(value, np.ndarray):  # an embedding: one cell of space-separated numbers
        return " ".join(f"{x:.5g}" for x in value.tolist())
    return round(value, 4)


def read_embeddings(csv_path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """(paths, (N, D) float32) from a CSV written with ``embeddings``; rows without one are left out."""
    import pandas as pd

    df = pd.read_csv(csv_path, usecols=["path", EMBEDDING]).dropna()
    if df.empty:
        raise ValueError(f"{csv_path}: no {EMBEDDING} values (label with --embeddings)")
    array = np.stack([np.array(cell.split(), dtype=np.float32) for cell in df[EMBEDDING]])
    return df["path"].tolist(), array


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="audio files, folders, or CSVs with a 'path' column")
    ap.add_argument("-o", "--output", required=True, help="CSV to write (appended to when it exists)")
    ap.add_argument("--teachers", default=",".join(TEACHERS), help=f"comma-separated, of: {', '.join(TEACHERS)}")
    ap.add_argument("--embeddings", action="store_true", help=f"DistillMOS's pooled representation too ({EMBEDDING})")
    args = ap.parse_args(argv)
    try:
        teachers = [t.strip() for t in args.teachers.split(",") if t.strip()]
        n = label_files(args.inputs, args.output, teachers, args.embeddings)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        sys.exit(f"Error: {e}")
    print(f"{n} files labelled into {args.output}")


if __name__ == "__main__":
    main()
