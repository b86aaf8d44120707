"""The one training loop of JSQA, shared by ``pretrain`` and ``finetune``.

The method modules build a :class:`Task` (the network, its parameter groups, the batches, the loss, validation,
what to save when validation improves) and call :func:`train`, which owns everything else, read top to bottom:

    run folder checked → AdamW (weight decay on weights, not on biases/norms) → warm-up + cosine schedule
    → (resume: weights, optimiser, schedule, step, RNG, early-stopping state) → steps:
        batch → forward (bf16 autocast on CUDA) → loss → backward → clip (0: off) → step
        every --log-every: a metrics.jsonl line      every --eval-every: validate, keep the best, early stop
        every --checkpoint-every (and at the end of this invocation): checkpoint.pt

Intervals of 0 are off (``eval_every=0``: validate only at the last step); ``stop_after`` ends this invocation
after that many steps with a checkpoint, and ``resume`` continues exactly where it stopped (same weights as an
uninterrupted run). Runs on CPU, one GPU, or several under torchrun (DDP; gloo on CPU): rank 0 logs and saves.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from jsqa_cli.distributed import Dist, all_reduce_mean, autocast, unwrap
from jsqa_cli.progress import progress_bar

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
OPTIONS_NAME = "options.json"


# ------------------------------------------------------------------------------------------ options


def check_options(o) -> None:
    """The training options both commands share (fields of the same names on PretrainOptions and
    FinetuneOptions), checked before anything is read: one ``ValueError`` line naming the option."""
    if o.steps is not None and o.steps < 1:
        raise ValueError(f"--steps {o.steps}: train at least 1 step")
    for name in ("log_every", "eval_every", "checkpoint_every", "patience", "warmup_steps"):
        value = getattr(o, name, None)  # pretraining has no --patience
        if value is not None and value < 0:
            raise ValueError(f"--{name.replace('_', '-')} {value}: must not be negative (0: off)")
    if o.stop_after is not None and o.stop_after < 1:
        raise ValueError(f"--stop-after {o.stop_after}: stop after at least 1 step (leave it out to run to the end)")
    if not math.isfinite(o.grad_clip) or o.grad_clip < 0:
        raise ValueError(f"--grad-clip {o.grad_clip}: give a positive gradient-norm limit, or 0 for no clipping")
    if o.weight_decay < 0:
        raise ValueError(f"--weight-decay {o.weight_decay}: must not be negative")
    if o.workers is not None and o.workers < 0:
        raise ValueError(f"--workers {o.workers}: give 0 (all in the main process) or more worker processes")
    if o.resume and o.overwrite:
        raise ValueError("--resume continues a run and --overwrite starts it again: choose one")


# ------------------------------------------------------------------------------------------ run folder


def prepare_run_folder(
    folder: str | Path, artefacts: Iterable[str], checkpoint: str, *, resume: bool, overwrite: bool, what: str, d: Dist
) -> Path:
    """One rule for an existing run folder, in both commands: ``resume`` continues it (``checkpoint``, a path
    inside ``folder``, must exist), ``overwrite`` removes the old run's ``artefacts`` (file or folder names inside
    ``folder``), otherwise a folder that holds any of them is refused in one line."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: exists and is not a folder")
    if resume and not (folder / checkpoint).is_file():
        raise FileNotFoundError(f"{folder / checkpoint}: no checkpoint to resume from")
    old = [folder / a for a in artefacts if (folder / a).exists()]
    if old and not (resume or overwrite):
        raise ValueError(f"{folder}: already holds a {what}; --resume continues it, --overwrite starts again")
    if d.enabled:  # every rank has looked at the folder before rank 0 changes it
        dist.barrier()
    if overwrite and d.is_main:
        for a in old:
            shutil.rmtree(a) if a.is_dir() else a.unlink()
    return folder


def write_options(run_dir: Path, options: dict, d: Dist) -> None:
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / OPTIONS_NAME).write_text(json.dumps(options, indent=2, default=str) + "\n")


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


def param_groups(
    model: torch.nn.Module,
    rates: dict[str, float],
    group_of: Callable[[str], str] = lambda n: "encoder",
    weight_decay: float = 0.0,
) -> list[dict]:
    """AdamW parameter groups: each named rate group (``group_of(parameter name)`` → a key of ``rates``) split in
    two, weight decay on weight matrices and kernels, none on biases, norms and other vectors/scalars."""
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        groups.setdefault((group_of(name), p.ndim >= 2), []).append(p)
    return [
        {"name": g, "params": ps, "lr": rates[g], "weight_decay": weight_decay if decay else 0.0}
        for (g, decay), ps in groups.items()
    ]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.05
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base learning rate, then cosine decay to ``min_ratio`` of it at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    step: int,
    extra: dict | None = None,
    name: str = CHECKPOINT_NAME,
) -> Path:
    """Everything needed to continue exactly: weights, optimiser, scheduler, step, RNG states, extra state.
    Written to a temporary file and renamed, so an interrupted save never leaves a broken checkpoint."""
    path = Path(run_dir) / name
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "step": step,
            "rng": rng_state(),
            "extra": extra or {},
        },
        tmp,
    )
    os.replace(tmp, path)
    return path


def load_checkpoint(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer=None,
    scheduler=None,
    name: str = CHECKPOINT_NAME,
    restore_rng: bool = True,
) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint` (read with ``weights_only=True``); returns it."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    try:
        unwrap(model).load_state_dict(ckpt["model"])
    except RuntimeError:
        raise ValueError(
            f"{path}: the checkpoint does not fit this network (a different run or an older "
            "version of jsqa); --overwrite starts again"
        ) from None
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
    """The records of a run's ``metrics.jsonl`` (an empty list when there is none)."""
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


# ------------------------------------------------------------------------------------------ the task


class Task:
    """What a method plugs into :func:`train`. Subclasses set ``model`` (the network that trains and is
    checkpointed, never DDP-wrapped) and override what they need; the defaults do nothing. Parameters outside
    ``model`` that ``param_groups`` adds (e.g. fine-tuning's distillation map) are clipped with the model's; the task
    saves them in its ``state_dict``."""

    name = "train"  # the progress bar's label
    items = "items"  # what one batch row is, for the throughput column ``<items>_per_s``
    metric: str | None = None  # key of evaluate()'s record that picks the best step and stops early (None: neither)
    higher_is_better = True
    eval_at_start = False  # validate once before the first step of a fresh run
    model: torch.nn.Module

    def param_groups(self) -> list[dict]:
        raise NotImplementedError

    def batches(self, step: int) -> Iterator:
        """Training batches from ``step`` on (the same batches an uninterrupted run would see)."""
        raise NotImplementedError

    def forward(self, batch, step: int):
        """The network's outputs (under autocast). The task picks the module that runs (e.g. DDP-wrapped)."""
        raise NotImplementedError

    def loss(self, outputs, batch) -> tuple[torch.Tensor, int]:
        """(loss, number of items in this rank's batch), in full precision."""
        raise NotImplementedError

    def evaluate(self, step: int) -> dict:
        """Validation: a flat record for metrics.jsonl (the same on every rank where ``metric`` is set)."""
        return {}

    def save_best(self, step: int, record: dict) -> None:
        """Called on rank 0 when validation improves on ``metric``."""

    def log_extra(self, step: int) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class Result:
    step: int  # the last step run
    finished: bool  # all steps run, or stopped early (False: --stop-after ended this invocation first)
    early_stopped: bool = False
    best: float | None = None
    best_step: int | None = None
    last_eval: dict = field(default_factory=dict)


def _improved(value: float, best: float | None, higher: bool) -> bool:
    if best is None:
        return True  # the first validation is always kept, so that there is a best model
    if not math.isfinite(value):
        return False
    return value > best if higher else value < best


# ------------------------------------------------------------------------------------------ the loop


def train(task: Task, opts, d: Dist, run_dir: Path, steps: int, warmup_steps: int) -> Result:
    """Run ``task`` for ``steps`` optimiser steps, or until ``opts.stop_after`` steps of this invocation or early
    stopping. ``opts`` carries the options both commands share (see :func:`check_options`); the learning rates
    and weight decay come with ``task.param_groups()``."""
    run_dir = Path(run_dir)
    model = task.model
    # ---- optimiser and schedule
    optimizer = torch.optim.AdamW(task.param_groups(), fused=d.device.type == "cuda")
    scheduler = warmup_cosine(optimizer, min(warmup_steps, steps - 1), steps)
    state = {"best": None, "best_step": None, "bad_evals": 0, "stopped": False, "last_eval": {}}
    step = 0
    if opts.resume:
        ckpt = load_checkpoint(run_dir, model, optimizer, scheduler)
        step = int(ckpt["step"])
        state.update(ckpt["extra"].get("state", {}))
        task.load_state_dict(ckpt["extra"].get("task", {}))
    else:
        seed_everything(opts.seed + d.rank)  # dropout differs between ranks
    run_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(run_dir, enabled=d.is_main, resume=opts.resume)
    batches = task.batches(step)
    parameters = list(model.parameters())  # what clipping measures: the model's, then any the task adds (its groups)
    own = {id(p) for p in parameters}
    parameters += [p for g in optimizer.param_groups for p in g["params"] if id(p) not in own]
    stop_at = min(steps, step + opts.stop_after) if opts.stop_after is not None else steps

    def validate(at_step: int) -> str:
        record = task.evaluate(at_step)
        state["last_eval"] = record
        if task.metric is None or not record:
            log.log(step=at_step, **record)
            return ""
        value = float(record[task.metric])
        if _improved(value, state["best"], task.higher_is_better):
            state.update(best=value, best_step=at_step, bad_evals=0)
            if d.is_main:
                task.save_best(at_step, record)
        else:
            state["bad_evals"] += 1
            state["stopped"] = 0 < getattr(opts, "patience", 0) <= state["bad_evals"]
        log.log(
            step=at_step,
            **record,
            best_step=state["best_step"],
            bad_evals=state["bad_evals"],
            early_stopped=state["stopped"],
        )
        return f"{task.metric} {value:.3f} (best {state['best']:.3f} @ {state['best_step']})"

    def checkpoint() -> None:
        if d.is_main:
            save_checkpoint(
                run_dir, model, optimizer, scheduler, step, extra={"state": state, "task": task.state_dict()}
            )

    if step == 0 and task.eval_at_start:
        validate(0)

    # ---- steps
    t_log, items, run_loss, run_n = time.time(), 0, 0.0, 0
    with progress_bar(enabled=d.is_main and not opts.quiet) as bar:
        progress = bar.add_task(task.name, total=steps, completed=step, status="")
        while step < stop_at and not state["stopped"]:
            batch = next(batches)
            with autocast(d.device, opts.bf16):
                outputs = task.forward(batch, step)
            loss, n = task.loss(outputs, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with_grad = [p for p in parameters if p.grad is not None]  # a frozen encoder has none
            grad_norm = torch.nn.utils.clip_grad_norm_(with_grad, opts.grad_clip if opts.grad_clip > 0 else math.inf)
            optimizer.step()
            scheduler.step()
            step += 1
            items += n * d.world_size
            run_loss, run_n = run_loss + float(loss.detach()), run_n + 1

            if opts.log_every and (step % opts.log_every == 0 or step == stop_at):
                mean_loss = all_reduce_mean(run_loss / run_n, d)
                now = time.time()
                names = {g["name"]: g["lr"] for g in optimizer.param_groups}
                log.log(
                    step=step,
                    loss=mean_loss,
                    lr=optimizer.param_groups[0]["lr"],
                    **({f"lr_{k}": v for k, v in names.items()} if len(names) > 1 else {}),
                    grad_norm=float(grad_norm),
                    **{f"{task.items}_per_s": round(items / max(now - t_log, 1e-9), 2)},
                    **task.log_extra(step),
                )
                t_log, items, run_loss, run_n = now, 0, 0.0, 0
                bar.update(progress, status=f"loss {mean_loss:.4f}")
            if (opts.eval_every and step % opts.eval_every == 0) or step == steps:
                status = validate(step)
                bar.update(progress, status=status or f"validated at step {step}")
                t_log, items = time.time(), 0  # throughput counts training only
            if (opts.checkpoint_every and step % opts.checkpoint_every == 0) or step == stop_at or state["stopped"]:
                checkpoint()
            bar.update(progress, completed=step)
    if d.enabled:
        dist.barrier()
    return Result(
        step=step,
        finished=step >= steps or state["stopped"],
        early_stopped=state["stopped"],
        best=state["best"],
        best_step=state["best_step"],
        last_eval=state["last_eval"],
    )
