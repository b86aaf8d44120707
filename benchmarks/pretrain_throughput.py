"""Pretraining throughput: pairs/s of the pair loader alone (by number of workers) and of training steps alone
(by preset), on CPU or GPU, so one can see whether the loader keeps up. Not a test.

Sources are generated (LibriSpeech-like 10-16 s FLAC utterances, CHiME-like long multi-channel WAV backgrounds
read by seeking) unless --speech/--noise point at real data, so it runs anywhere, e.g. on a bare GPU machine:

    python benchmarks/pretrain_throughput.py --presets tiny small --workers 0 2            # CPU
    python benchmarks/pretrain_throughput.py --presets small base --workers 0 4 8 16 --batch-size 64 --e2e base

Prints a table and writes JSON (--json). Figures go to docs/performance.md (section Pretraining).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from jsqa_cli.distributed import autocast, resolve_device
from jsqa_cli.model import build_model
from jsqa_cli.pairs import PairDataset, PairSampler, make_pairs, read_manifest, worker_init
from jsqa_cli.pretrain import ContrastiveNet, nt_xent, pretrain
from jsqa_cli.train import read_metrics


def make_sources(root: Path, n_speech: int = 120, n_noise: int = 3, noise_minutes: float = 2.0) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    sr = 16_000
    for i in range(n_speech):
        path = root / "speech" / f"{1000 + i % 40}" / "1" / f"{1000 + i % 40}-1-{i:04d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(rng.uniform(10, 16) * sr)) / sr
        f0 = rng.uniform(90, 250)
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 10)) * (1 + np.sin(2 * np.pi * 4 * t)) / 2
        sf.write(str(path), (0.2 * x / np.abs(x).max()).astype(np.float32), sr)
    (root / "noise").mkdir(parents=True, exist_ok=True)
    for j in range(n_noise):  # CHiME-3 style: long, several channels
        data = (0.05 * rng.standard_normal((int(noise_minutes * 60 * sr), 4))).astype(np.float32)
        sf.write(str(root / "noise" / f"BGD_{j:03d}_CAF.CH1.wav"), data, sr)
    return root / "speech", root / "noise"


def loader_pairs_per_s(pairs_dir: Path, workers: int, batch_size: int, batches: int, hard: bool) -> float:
    df, _ = read_manifest(pairs_dir)
    ds = PairDataset(df[df.split == "train"], pairs_dir, hard_negatives=hard)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        sampler=PairSampler(len(ds)),
        drop_last=True,
        num_workers=workers,
        worker_init_fn=worker_init,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        pin_memory=torch.cuda.is_available(),
    )
    it = iter(loader)
    for _ in range(max(1, min(3, batches // 5))):  # warm-up: worker start, file caches
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t)


def train_pairs_per_s(preset: str, device: torch.device, batch_size: int, steps: int, seconds: float) -> float:
    torch.manual_seed(0)
    model = build_model(preset).to(device)
    net = ContrastiveNet(model).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    t_len = int(seconds * 16_000)
    wav = (0.05 * torch.randn(2 * batch_size, t_len)).to(device)
    snr = torch.rand(2 * batch_size, device=device) * 25 - 5

    def step():
        with autocast(device):
            z = net(wav)
        loss = nt_xent(z, snr, batch_size, 0.1, 3.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speech", nargs="*", help="real speech folders (default: generated)")
    ap.add_argument("--noise", nargs="*", help="real noise folders (default: generated)")
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    ap.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    ap.add_argument("--loader-batches", type=int, default=10)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--num-pairs", type=int, default=2000)
    ap.add_argument("--hard-negatives", action="store_true")
    ap.add_argument("--e2e", nargs="*", default=[], help="presets to run `pretrain` end to end (real loader)")
    ap.add_argument("--e2e-steps", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    device = resolve_device(args.device)
    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "loader": {},
        "train": {},
        "e2e": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.speech and args.noise:
            speech, noise = args.speech, args.noise
        else:
            speech, noise = make_sources(tmp / "src")
            speech, noise = [speech], [noise]
        t = time.perf_counter()
        summary = make_pairs(
            speech,
            noise,
            tmp / "pairs",
            num_pairs=args.num_pairs,
            val_fraction=0.05,
            workers=min(8, os.cpu_count() or 1),
        )
        result["make_pairs_pairs_per_s"] = round(summary["pairs"] / (time.perf_counter() - t), 1)
        print(f"make-pairs: {result['make_pairs_pairs_per_s']} pairs/s")
        for w in args.workers:
            r = loader_pairs_per_s(tmp / "pairs", w, args.batch_size, args.loader_batches, args.hard_negatives)
            result["loader"][w] = round(r, 1)
            print(f"loader, {w:2d} workers: {r:8.1f} pairs/s", flush=True)
        for preset in args.presets:
            r = train_pairs_per_s(preset, device, args.batch_size, args.train_steps, 4.0)
            result["train"][preset] = round(r, 1)
            print(f"train step, {preset:5s} on {device.type}: {r:8.1f} pairs/s", flush=True)
        for preset in args.e2e:
            run = tmp / f"run-{preset}"
            pretrain(
                pairs=str(tmp / "pairs"),
                output=str(run),
                preset=preset,
                batch_size=args.batch_size,
                steps=args.e2e_steps,
                eval_every=0,
                log_every=5,
                quiet=True,
                device=args.device,
                checkpoint_every=0,
                val_max_pairs=16,
            )
            rates = [r["pairs_per_s"] for r in read_metrics(run) if "pairs_per_s" in r][1:]  # skip warm-up
            result["e2e"][preset] = round(float(np.median(rates)), 1) if rates else None
            print(f"pretrain end to end, {preset}: {result['e2e'][preset]} pairs/s (median)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
