"""Where a process runs: the device (``auto|cpu|cuda|cuda:N``), torchrun/DDP set-up and tear-down, bf16 autocast.
Used by scoring, evaluation and training alike; nothing here trains."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """Where this process runs: rank and world size (1 without torchrun), device, and whether it logs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def hardware(self) -> str:
        """What the run ran on, in words for a model card: ``NVIDIA H100 80GB HBM3`` (``4 × …`` under torchrun), or
        ``CPU, 2 cores`` (the cores this process may use; ``…, 2 processes`` under torchrun)."""
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            return f"{self.world_size} × {name}" if self.enabled else name
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return f"CPU, {cores} cores" + (f", {self.world_size} processes" if self.enabled else "")


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (the GPU when there is one), ``cpu``, ``cuda`` (GPU ``local_rank``: torchrun's rank on this node) or
    ``cuda:N``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device} requested but CUDA is not available")
        return torch.device(device) if ":" in device else torch.device("cuda", local_rank)
    return torch.device(device)


def setup_distributed(device: str = "auto") -> Dist:
    """Initialise DDP when launched by torchrun (RANK/WORLD_SIZE set): NCCL on CUDA, gloo on CPU."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist(device=resolve_device(device))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local, dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str = "auto"):
    """``with distributed(device) as d:`` — :func:`setup_distributed`, and the process group torn down after."""
    d = setup_distributed(device)
    try:
        yield d
    finally:
        cleanup_distributed()


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (Ampere and newer); full precision elsewhere."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def all_reduce_mean(value: float, d: Dist) -> float:
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / d.world_size


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def default_workers(device: str | torch.device | None = None) -> int:
    """Worker processes when ``--workers`` is not given (the rule of ``--workers`` in every command): the CPU cores
    of this process (the machine's, divided among the processes torchrun starts on it) beyond the first, at most 8;
    half of those when the main process runs a model on the CPU (``device`` cpu, or auto without a GPU), whose
    threads need the cores too: on 2 cores, scoring with a decoding worker was 13 % slower than without one."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    spare = (os.cpu_count() or 1) // local - 1
    if device is not None and (str(device) == "cpu" or (str(device) == "auto" and not torch.cuda.is_available())):
        spare //= 2
    return max(0, min(8, spare))
