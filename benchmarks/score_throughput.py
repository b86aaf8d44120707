"""Throughput of the whole ``jsqa score`` path (decode + resample + model + CSV) and peak memory for a long file.

    python benchmarks/score_throughput.py                        # small preset, CPU, 1 h of audio, 1 h file
    python benchmarks/score_throughput.py --device cuda --minutes 240 --batch-sizes 64 256 --workers 8

Generates an NISQA-like folder (4-12 s files: 48 kHz 16-bit WAV and 16 kHz FLAC), saves a randomly initialised
model of the preset (weights do not change speed), and times ``python -m jsqa_cli score FOLDER -o scores.csv`` as a
subprocess, start-up included, for each workers × batch-size setting. × real time = audio duration / wall time.
Then scores one long file (default 1 h) and reports the peak resident memory of that process (workers included).
Prints a Markdown table for docs/performance.md and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import synth_speech  # noqa: E402  (the test suite's speech-like signal)

from jsqa_cli.model import build_model, save_model  # noqa: E402


def make_corpus(folder: Path, minutes: float, seed: int = 0) -> float:
    """NISQA-like files until ``minutes`` of audio: returns the total duration in seconds."""
    rng = np.random.default_rng(seed)
    total, i = 0.0, 0
    folder.mkdir(parents=True, exist_ok=True)
    while total < minutes * 60:
        seconds = float(rng.uniform(4, 12))
        if i % 2 == 0:  # NISQA's degraded files: 48 kHz 16-bit WAV
            sf.write(
                folder / f"f{i:05d}.wav",
                synth_speech(seconds, 48_000, seed=i, f0=rng.uniform(90, 250)),
                48_000,
                subtype="PCM_16",
            )
        else:
            sf.write(folder / f"f{i:05d}.flac", synth_speech(seconds, 16_000, seed=i, f0=rng.uniform(90, 250)), 16_000)
        total, i = total + seconds, i + 1
    return total


def make_long_file(path: Path, hours: float) -> float:
    """A long 16 kHz FLAC, written in one-minute blocks so that making it needs little memory."""
    with sf.SoundFile(path, "w", 16_000, 1, subtype="PCM_16") as f:
        for m in range(int(round(hours * 60))):
            f.write(synth_speech(60.0, 16_000, seed=m))
    return hours * 3600


def run_score(args: list[str], env: dict | None = None) -> tuple[float, int, int]:
    """(wall seconds, exit code, peak RSS in MiB) of ``python -m jsqa_cli score ARGS`` in a fresh wrapper process,
    so that the peak RSS belongs to this run alone (the largest of the process and its DataLoader workers)."""
    wrapper = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(time.perf_counter() - t, rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-m", "jsqa_cli", "score", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=True,
    )
    wall, rc, rss_kib = out.stdout.split()[-3:]
    return float(wall), int(rc), int(rss_kib) // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument(
        "--heads", default="", help="extra heads of the generated model, e.g. sig,bak (the bundled jsqa-small's)"
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--minutes", type=float, default=60.0, help="audio in the generated folder")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--long-hours", type=float, default=1.0, help="length of the long file (0: skip)")
    ap.add_argument("--long-workers", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--tmp", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="jsqa-bench-"))
    torch.manual_seed(0)
    heads = [h for h in args.heads.split(",") if h]
    model = save_model(build_model(args.preset, extra_heads=heads), tmp / f"model-{args.preset}")
    t = time.perf_counter()
    audio_s = make_corpus(tmp / "corpus", args.minutes)
    n_files = len(list((tmp / "corpus").iterdir()))
    print(
        f"corpus: {n_files} files, {audio_s / 60:.1f} min (made in {time.perf_counter() - t:.0f} s); "
        f"load average before timing: {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    results = {
        "preset": args.preset,
        "heads": heads,
        "device": args.device,
        "files": n_files,
        "audio_s": audio_s,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "runs": [],
    }
    if args.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    # Fixed cost of one command (Python and torch imports, model load, one 4-12 s file): the throughput figures
    # are given with it ("whole command") and without it ("steady state", what a large corpus sees; left out when
    # the corpus is too small for the difference to mean anything).
    one = sorted((tmp / "corpus").glob("*.flac"))[0]
    startup, _, _ = run_score(
        [
            str(one),
            "-o",
            str(tmp / "one.csv"),
            "-m",
            str(model),
            "-q",
            "--overwrite",
            "-j",
            "0",
            "--device",
            args.device,
        ]
    )
    results["startup_s"] = round(startup, 2)
    print(f"start-up (one short file): {startup:.2f} s", flush=True)
    for workers in args.workers:
        for bs in args.batch_sizes:
            load = os.getloadavg()[0]
            wall, rc, rss = run_score(
                [
                    str(tmp / "corpus"),
                    "-o",
                    str(tmp / "scores.csv"),
                    "-m",
                    str(model),
                    "-q",
                    "--overwrite",
                    "-j",
                    str(workers),
                    "-b",
                    str(bs),
                    "--device",
                    args.device,
                ]
            )
            assert rc == 0, f"jsqa score exited {rc}"
            run = dict(
                workers=workers,
                batch_size=bs,
                wall_s=round(wall, 2),
                realtime=round(audio_s / wall, 1),
                realtime_steady=round(audio_s / (wall - startup), 1) if wall > 1.5 * startup else None,
                peak_rss_mib=rss,
                load_before=round(load, 2),
            )
            results["runs"].append(run)
            print(json.dumps(run), flush=True)

    if args.long_hours > 0:
        long = tmp / "long.flac"
        long_s = make_long_file(long, args.long_hours)
        short = sorted((tmp / "corpus").glob("*.flac"))[0]
        common = ["-m", str(model), "-q", "--overwrite", "-j", str(args.long_workers), "--device", args.device]
        _, _, rss_short = run_score([str(short), "-o", str(tmp / "short.csv"), *common])
        wall, rc, rss_long = run_score([str(long), "-o", str(tmp / "long.csv"), *common])
        results["long_file"] = dict(
            hours=args.long_hours,
            wall_s=round(wall, 1),
            realtime=round(long_s / wall, 1),
            peak_rss_mib=rss_long,
            peak_rss_short_file_mib=rss_short,
            decoded_audio_mib=round(long_s * 16_000 * 4 / 2**20),
            workers=args.long_workers,
        )
        print(json.dumps(results["long_file"]), flush=True)

    best = max(results["runs"], key=lambda r: r["realtime"]) if results["runs"] else None
    print(
        "\n| preset | device | workers | batch | wall (s) | × real time, whole command | × real time, steady state "
        "| peak RSS (MiB) |\n|---|---|---|---|---|---|---|---|"
    )
    for r in results["runs"]:
        print(
            f"| {args.preset} | {args.device} | {r['workers']} | {r['batch_size']} | {r['wall_s']} | "
            f"{r['realtime']}{' **best**' if r is best else ''} | {r['realtime_steady']} | {r['peak_rss_mib']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
