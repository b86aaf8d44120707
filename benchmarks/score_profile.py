"""Where the time of ``jsqa score`` goes: start-up, decode, resample, log-mel front end, the rest of the model.

    python benchmarks/score_profile.py                   # the bundled model, a generated 10-minute NISQA-like folder
    python benchmarks/score_profile.py --minutes 30 --model models/my-jsqa --batch-size 32

Each stage is timed alone in this process, with the same functions the scoring path calls (soundfile decoding,
``audio.resample``, the model's front end and the rest of its forward pass on the same 8 s windows, batched as
``jsqa score`` batches them), then the whole command is timed as a subprocess (start-up included) and the
start-up alone (``--help`` import cost, and one 1 s file). × real time = seconds of audio / seconds of work.
Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_throughput import make_corpus  # noqa: E402  (the same NISQA-like folder)

from jsqa_cli.audio import SAMPLE_RATE, find_audio, pad_batch, resample, window_bounds  # noqa: E402
from jsqa_cli.model import load_model  # noqa: E402


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=False, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="audio in the generated folder")
    ap.add_argument("--model", default=None, help="model name or folder (default: the bundled one)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tmp", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="jsqa-profile-"))
    corpus = tmp / "corpus"
    audio_s = make_corpus(corpus, args.minutes) if not corpus.is_dir() else None
    files = find_audio([corpus])
    model = load_model(args.model)
    enc = model.encoder

    decode_s, resample_s, waves = 0.0, 0.0, []
    for f in files:
        dt, (data, sr) = timed(sf.read, str(f), dtype="float32")
        decode_s += dt
        dt, wav = timed(resample, data, sr, SAMPLE_RATE)
        resample_s += dt
        waves.append(wav)
    audio_s = audio_s or sum(len(w) for w in waves) / SAMPLE_RATE
    windows = [w[a:b] for w in waves for a, b in window_bounds(len(w))]
    windows.sort(key=len)
    batches = [pad_batch(windows[i : i + args.batch_size]) for i in range(0, len(windows), args.batch_size)]
    frontend_s = model_s = 0.0
    with torch.inference_mode():
        model(*batches[0])  # warm-up
        for wav, lengths in batches:
            dt, (feats, n) = timed(enc.frontend, wav, lengths)
            frontend_s += dt
            t = time.perf_counter()
            model(wav, lengths)
            model_s += time.perf_counter() - t - dt  # the forward pass less its front end

    py = sys.executable
    help_s = min(wall([py, "-m", "jsqa_cli", "--help"]) for _ in range(3))
    one = tmp / "one.wav"
    sf.write(one, waves[0][:SAMPLE_RATE], SAMPLE_RATE)
    model_args = ["-m", args.model] if args.model else []
    first_row_s = min(
        wall([py, "-m", "jsqa_cli", "score", str(one), "-o", str(tmp / "one.csv"), "--overwrite", "-q", *model_args])
        for _ in range(3)
    )
    cmd = [py, "-m", "jsqa_cli", "score", str(corpus), "-o", str(tmp / "s.csv"), "--overwrite", "-q"]
    whole_s = min(wall([*cmd, *model_args, "-b", str(args.batch_size)]) for _ in range(2))

    rows = [
        ("decode (soundfile)", decode_s),
        ("resample to 16 kHz", resample_s),
        ("log-mel front end", frontend_s),
        ("model after the front end", model_s),
    ]
    work = sum(s for _, s in rows)
    print(
        f"\n{len(files)} files, {audio_s / 60:.1f} min of audio, {len(windows)} windows, batch {args.batch_size}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print("| stage | seconds | share of the work | × real time alone |\n|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.2f} | {100 * s / work:.0f} % | {audio_s / s:.0f} |")
    print(f"| all stages, one after another | {work:.2f} | 100 % | {audio_s / work:.0f} |")
    print(f"| `jsqa --help` (Python + CLI imports) | {help_s:.2f} | | |")
    print(f"| `jsqa score` on one 1 s file (start-up: imports, model load, one row) | {first_row_s:.2f} | | |")
    print(f"| `jsqa score` on the folder, whole command | {whole_s:.2f} | | {audio_s / whole_s:.0f} |")


if __name__ == "__main__":
    main()
