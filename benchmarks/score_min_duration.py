"""How short can a file be and still get a meaningful score? Scores short crops of real speech with the bundled model
and compares them with the score of the whole utterance. The result chose ``audio.MIN_DURATION_S`` (docs/scoring.md).

    python benchmarks/score_min_duration.py [--files 40] [--data /work/shared/data/speech/librispeech/test-other]
"""

from __future__ import annotations

import argparse

import numpy as np

from jsqa_cli.audio import SAMPLE_RATE, find_audio, load_audio
from jsqa_cli.model import load_model
from jsqa_cli.scoring import score_waveforms

CROPS_S = [0.003, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data/speech/librispeech/test-other")
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--crops", type=int, default=3, help="crops per file and length, at random offsets")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    paths = find_audio([args.data], extensions=(".flac", ".wav"))
    paths = [paths[i] for i in sorted(rng.choice(len(paths), size=min(args.files, len(paths)), replace=False))]
    waves = [w for w in (load_audio(p)[0] for p in paths) if len(w) >= 5 * SAMPLE_RATE]
    model = load_model(None)
    full = score_waveforms(model, waves)
    print(
        f"{len(waves)} utterances of 5 s or more from {args.data}; full-length MOS mean {full.mean():.2f} "
        f"(sd {full.std():.2f})"
    )
    print("| crop | mean MOS | sd across files | median abs. diff. from full | corr. with full |")
    print("|---:|---:|---:|---:|---:|")
    for crop_s in CROPS_S:
        n = max(1, round(crop_s * SAMPLE_RATE))
        crops, owner = [], []
        for i, w in enumerate(waves):
            for start in rng.integers(0, len(w) - n, size=args.crops):
                crops.append(w[start : start + n])
                owner.append(i)
        scores = score_waveforms(model, crops, batch_size=64)
        ref = full[owner]
        per_file = np.array([scores[np.array(owner) == i].mean() for i in range(len(waves))])
        corr = np.corrcoef(per_file, full)[0, 1] if per_file.std() > 1e-6 else float("nan")
        print(
            f"| {crop_s:g} s | {scores.mean():.2f} | {scores.std():.3f} | {np.median(np.abs(scores - ref)):.2f} "
            f"| {corr:.2f} |"
        )


if __name__ == "__main__":
    main()
