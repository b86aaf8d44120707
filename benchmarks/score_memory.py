"""Peak memory of ``jsqa score`` on long files: it must not grow with the file's length.

    python benchmarks/score_memory.py                        # 10-minute and 1-hour 16 kHz WAV, bundled model
    python benchmarks/score_memory.py --minutes 10 60 240 --workers default 0 --model models/my-jsqa

Writes each long file (speech-like test signal, 16-bit WAV at 16 kHz) to a temporary folder, runs the whole command
``python -m jsqa_cli score FILE -o out.csv`` as a subprocess for each workers setting (``default``: no ``-j``) and
samples the memory of its process tree (the command and its decoding workers) every ``--interval`` seconds:

- peak RSS of the tree: the sum of the processes' resident sets (pages shared between the command and its forked
  workers, such as torch's libraries, count once per process);
- peak PSS of the tree: the same with each shared page divided among the processes that share it (what the tree
  really takes from the machine);
- peak RSS of the largest process.

Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import synth_speech  # noqa: E402  (the test suite's speech-like signal)

MIB = 2**20


def make_long_file(path: Path, minutes: float) -> float:
    """A long 16 kHz 16-bit WAV, written a minute at a time so that making it needs little memory."""
    with sf.SoundFile(path, "w", 16_000, 1, subtype="PCM_16") as f:
        for m in range(round(minutes)):
            f.write(synth_speech(60.0, 16_000, seed=m))
    return minutes * 60


def tree_memory(proc: psutil.Process) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, largest RSS) in bytes over ``proc`` and its descendants; vanished ones are skipped."""
    rss = pss = largest = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss, pss, largest = rss + info.rss, pss + getattr(info, "pss", info.rss), max(largest, info.rss)
    return rss, pss, largest


def run_score(args: list[str], interval: float) -> dict:
    """Run ``python -m jsqa_cli score ARGS``; wall seconds, exit code and the peaks of :func:`tree_memory`."""
    start = time.perf_counter()
    proc = psutil.Popen(
        [sys.executable, "-m", "jsqa_cli", "score", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    peak = [0, 0, 0]
    while proc.poll() is None:
        try:
            peak = [max(a, b) for a, b in zip(peak, tree_memory(proc))]
        except psutil.NoSuchProcess:
            pass
        time.sleep(interval)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace").strip()
    if proc.returncode != 0:
        raise SystemExit(f"jsqa score exited {proc.returncode}: {err.splitlines()[-1] if err else ''}")
    return {"wall_s": wall, "rss_mib": peak[0] / MIB, "pss_mib": peak[1] / MIB, "largest_mib": peak[2] / MIB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 60], help="lengths of the long files")
    ap.add_argument("--workers", nargs="+", default=["default", "0"], help="-j settings; 'default' gives no -j")
    ap.add_argument("--model", default=None, help="model for --model (default: the bundled one)")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between memory samples")
    ap.add_argument("--tmp", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="jsqa-memory-"))
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}; files in {tmp}", flush=True)
    rows = []
    for minutes in args.minutes:
        path = tmp / f"long-{minutes:g}min.wav"
        audio_s = make_long_file(path, minutes)
        for workers in args.workers:
            cmd = [str(path), "-o", str(tmp / "out.csv"), "--overwrite", "-q"]
            cmd += ["-m", args.model] if args.model else []
            cmd += [] if workers == "default" else ["-j", workers]
            r = run_score(cmd, args.interval)
            rows.append({"minutes": minutes, "workers": workers, "realtime": audio_s / r["wall_s"], **r})
            print(rows[-1], flush=True)
        path.unlink()

    print(
        "\n| file | `-j` | wall (s) | × real time | peak RSS, tree (MiB) | peak PSS, tree (MiB) "
        "| peak RSS, largest process (MiB) |\n|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['minutes']:g} min | {r['workers']} | {r['wall_s']:.1f} | {r['realtime']:.0f} | "
            f"{r['rss_mib']:.0f} | {r['pss_mib']:.0f} | {r['largest_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
