"""Can a codec's trace be seen without the clean reference? A linear probe on simple features, by feature set.

    python training/codec_probe.py                       # Opus at the quality ladder's two highest bitrates
    python training/codec_probe.py --codec mp3 --levels 0.8 0.9

Each held-out utterance is featurised clean and coded; a ridge classifier trained on training-split utterances
(LibriSpeech, 6 s crops at -26 dBFS) says "coded or not" for the test split's utterances (the quality checks'),
one clip at a time, so it has no reference to compare with. Feature sets, each pooled over the loudest 60 % of
the frames:

- ``log-mel``: per band of the `small` preset's 64 log-mel bands, the mean, the sd and the mean absolute
  frame-to-frame change: what the model's input keeps, summarised;
- ``flatness``: the mean log spectral flatness of 16 equal 500 Hz bands of the same STFT (JSQAConfig.flatness_bands);
- both together.

Accuracy 0.5 is chance. Used for docs/results.md (eighth version): Opus at 30 and 17 kbit/s shows mostly as a
high-shelf loss in the mel bands, which the voices' own timbre varies more than, but as noise in place of
harmonics in the flatness bands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import impairments as imp  # noqa: E402
import quality_checks  # noqa: E402

from jsqa_cli.audio import SAMPLE_RATE, load_audio  # noqa: E402
from jsqa_cli.model import build_model  # noqa: E402

SECONDS = 6.0


def features(frontend, x: np.ndarray) -> dict[str, np.ndarray]:
    """Pooled log-mel and flatness statistics of one clip (the model's own frontend computes both)."""
    with torch.inference_mode():
        f, _ = frontend(torch.from_numpy(x.astype(np.float32))[None], torch.tensor([len(x)]))
    f = f[0].numpy()
    n_mels = frontend.cfg.n_mels
    mel, flat = f[:n_mels], f[n_mels:]
    loud = mel.mean(0) > np.percentile(mel.mean(0), 40)
    mel, flat = mel[:, loud], flat[:, loud]
    return {
        "log-mel": np.concatenate([mel.mean(1), mel.std(1), np.abs(np.diff(mel, axis=1)).mean(1)]),
        "flatness": flat.mean(1),
    }


def probe(train: list[np.ndarray], test: list[np.ndarray], code, frontend, lam: float) -> dict[str, float]:
    """Test accuracy of a ridge classifier (clean vs coded) per feature set, trained on ``train``."""

    def table(clips):
        rows = [features(frontend, x) for x in clips] + [features(frontend, code(x)[: len(x)]) for x in clips]
        return rows, np.r_[-np.ones(len(clips)), np.ones(len(clips))]

    (tr, ytr), (te, yte) = table(train), table(test)
    out = {}
    for name in ("log-mel", "flatness", "both"):
        pick = (lambda r: np.concatenate([r["log-mel"], r["flatness"]])) if name == "both" else (lambda r: r[name])
        a, b = np.stack([pick(r) for r in tr]), np.stack([pick(r) for r in te])
        mu, sd = a.mean(0), a.std(0) + 1e-8
        a, b = (a - mu) / sd, (b - mu) / sd
        w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ ytr)
        out[name] = float(((b @ w > 0) == (yte > 0)).mean())
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", default="data/recipe/sources", help="prepare_sources.py output")
    ap.add_argument("--codec", default="opus", choices=sorted(imp.CODECS))
    ap.add_argument("--levels", type=float, nargs="+", default=[0.9, 0.95], help="codec levels (impairments.codec)")
    ap.add_argument("--train", type=int, default=160, help="training-split LibriSpeech utterances")
    ap.add_argument("--utterances", type=int, default=30, help="held-out utterances (as quality_checks.py)")
    ap.add_argument("--ridge", type=float, default=1.0)
    args = ap.parse_args(argv)
    sources = Path(args.sources)
    df = pd.read_csv(sources / "speech_train.csv")
    df = df[(df.corpus == "librispeech") & (df.duration_s >= SECONDS)]
    df = df.sample(min(args.train, len(df)), random_state=0)
    train = [imp.set_level(load_audio(p)[0][: int(SECONDS * SAMPLE_RATE)], imp.NOMINAL_LEVEL_DB) for p in df.path]
    test, _ = quality_checks.test_utterances(sources, args.utterances, SECONDS, 0)
    frontend = build_model("small", flatness_bands=16).encoder.frontend
    rows = []
    print(f"| {args.codec} level | log-mel stats | flatness | both |\n|---|---|---|---|")
    for level in args.levels:
        acc = probe(train, test, lambda x: imp.codec(x, args.codec, level), frontend, args.ridge)
        rows.append(dict(level=level, **acc))
        print(f"| {level} | {acc['log-mel']:.2f} | {acc['flatness']:.2f} | {acc['both']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
