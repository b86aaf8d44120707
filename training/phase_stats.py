"""Where model.PHASE_OFFSET and PHASE_SCALE come from: the group-delay deviation of real speech, and how packet loss
and clipping move it.

    python training/phase_stats.py                          # 40 LibriSpeech utterances, 8 bands
    python training/phase_stats.py --files 100 --bands 16

Every frame of each utterance (at its own level, as the corpus has it) counts, pauses included; the raw values
(radians, model.group_delay_deviation) give the mean and standard deviation that the constants round. The same
utterances, degraded (white noise at 10 dB SNR, clipping at a quarter of the peak, 20 ms gaps zeroed or filled
with the previous 20 ms in 30 % of 100 ms slots), show what the cue responds to.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from jsqa_cli.model import PHASE_OFFSET, PHASE_SCALE, build_model, group_delay_deviation

LIBRISPEECH = Path("/work/shared/data/speech/librispeech/train-clean-100")


def degrade(x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    noise = rng.standard_normal(len(x)).astype(np.float32) * np.sqrt(np.mean(x**2) / 10)
    peak = float(np.max(np.abs(x)))
    gap, slot = 320, 1600  # 20 ms lost in 30 % of the 100 ms slots
    zeroed, repeated = x.copy(), x.copy()
    for s in range(gap, len(x) - gap, slot):
        if rng.random() < 0.3:
            zeroed[s : s + gap] = 0
            repeated[s : s + gap] = x[s - gap : s]
    return {
        "clean": x,
        "noise 10 dB": x + noise,
        "clipped": np.clip(x, -peak / 4, peak / 4),
        "gaps zeroed": zeroed,
        "gaps repeated": repeated,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=LIBRISPEECH)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--bands", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    files = sorted(args.root.rglob("*.flac"))
    rng = np.random.default_rng(args.seed)
    files = [files[i] for i in rng.choice(len(files), min(args.files, len(files)), replace=False)]
    frontend = build_model("tiny", phase_bands=args.bands).encoder.frontend
    values: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for f in files:
            x, _ = sf.read(f, dtype="float32")
            for name, y in degrade(x, rng).items():
                spec = frontend._complex_spectrogram(torch.from_numpy(y)[None])
                values.setdefault(name, []).append(group_delay_deviation(spec, args.bands)[0])
    print(f"{len(files)} utterances, {args.bands} bands; raw radians, then as the model sees them")
    for name, v in values.items():
        v = torch.cat(v, dim=1)
        z = (v + PHASE_OFFSET) / PHASE_SCALE
        bands = " ".join(f"{m:.2f}" for m in v.mean(1).tolist())
        print(
            f"{name:14s} mean {v.mean():.3f} sd {v.std():.3f} | normalised {z.mean():+.2f} sd {z.std():.2f} | {bands}"
        )


if __name__ == "__main__":
    main()
