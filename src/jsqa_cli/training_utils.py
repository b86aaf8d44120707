"""Plumbing shared by ``pretrain`` and ``finetune``: torchrun/DDP, devices and bf16, schedules, checkpoints that
resume exactly, metrics.jsonl, and the live progress bar. Nothing method-specific lives here."""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from jsqa_cli.distributed import Dist, all_reduce_mean, autocast, cleanup_distributed, distributed, resolve_device, \
    setup_distributed, unwrap  # noqa: F401  (re-exported for the training modules)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


# ------------------------------------------------------------------------------------------ reproducibility


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------ optimisation


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base learning rate, then cosine decay to ``min_ratio`` of it at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(run_dir: str | Path, model: torch.nn.Module, optimizer, scheduler, step: int,
                    extra: dict | None = None, name: str = CHECKPOINT_NAME) -> Path:
    """Everything needed to continue exactly: weights, optimiser, scheduler, step, RNG states, extra state.

    Written atomically (temp file + rename) so an interrupted save never leaves a broken checkpoint.
    Only our own runs' checkpoints are read back, and only with ``weights_only=True``.
    """
    path = Path(run_dir) / name
    tmp = path.with_suffix(".tmp")
    torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "step": step, "rng": rng_state(), "extra": extra or {}}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: str | Path, model: torch.nn.Module, optimizer=None, scheduler=None,
                    name: str = CHECKPOINT_NAME, restore_rng: bool = True) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns it (``step``, ``extra``...)."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(ckpt["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if restore_rng:
        set_rng_state(ckpt["rng"])
    return ckpt


# ------------------------------------------------------------------------------------------ logging


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (rank 0 only); resumed runs append."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume: bool = False):
        self.path = Path(run_dir) / METRICS_NAME
        self.enabled = enabled
        if enabled and not resume and self.path.exists():
            self.path.unlink()

    def log(self, **record) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_NAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.item() if o.numel() == 1 else o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def training_progress(enabled: bool = True, quiet: bool = False):
    """A rich progress bar for training loops: step count, live loss text, elapsed and remaining time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=not enabled or quiet, transient=False)


def infinite_loader(loader, sampler=None, start_epoch: int = 0):
    """Yield (epoch, batch) forever, calling ``sampler.set_epoch`` so each epoch shuffles differently."""
    epoch = start_epoch
    while True:
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for batch in loader:
            yield epoch, batch
        epoch += 1
