"""Pretraining on 2 gloo processes (CPU): negatives gathered across ranks with gradients, and a short DDP run."""

from __future__ import annotations

import json
import math
import os
import socket

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from jsqa_cli import pairs as P
from jsqa_cli import pretrain as T
from jsqa_cli.train import read_metrics

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_loss(z_ranks: list[torch.Tensor], n: int, tau: float) -> torch.Tensor:
    """Single-process reference: the sum over ranks of each rank's mean loss, with global candidates."""
    z_all = F.normalize(torch.cat(z_ranks), dim=-1)
    total = 0.0
    for r, zr in enumerate(z_ranks):
        off = r * len(zr)
        idx = torch.arange(2 * n)
        logits = z_all[off : off + 2 * n] @ z_all.T / tau
        logits[idx, off + idx] = float("-inf")
        total = total + F.cross_entropy(logits, off + (idx + n) % (2 * n))
    return total


def _worker(rank: int, port: int, pairs_dir: str, out: str, result_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    # 1) the loss on each rank's views, with negatives gathered from both ranks, has the gradient of the global loss
    n, tau = 3, 0.2
    torch.manual_seed(0)
    z_ranks = [torch.randn(2 * n, 4) for _ in range(WORLD)]
    mine = z_ranks[rank].clone().requires_grad_(True)
    T.nt_xent(mine, torch.zeros(2 * n), n, tau).backward()
    ref = [z.clone().requires_grad_(True) for z in z_ranks]
    _global_loss(ref, n, tau).backward()
    torch.testing.assert_close(mine.grad, ref[rank].grad, rtol=1e-5, atol=1e-6)
    # 2) a short DDP run (pretrain finds the process group torchrun would have set up)
    T.pretrain(
        pairs=pairs_dir,
        output=out,
        preset="tiny",
        batch_size=3,
        steps=3,
        workers=0,
        eval_every=1000,
        val_max_pairs=6,
        log_every=1,
        quiet=True,
        warmup_steps=1,
    )
    with open(os.path.join(result_dir, f"ok{rank}"), "w") as f:
        f.write("ok")


def test_ddp_two_gloo_ranks(jnd_sources, tmp_path):
    pairs_dir = tmp_path / "pairs"
    P.make_pairs(
        [jnd_sources / "speech"], [jnd_sources / "noise"], pairs_dir, num_pairs=24, seconds=1.0, val_fraction=0.25
    )
    out = tmp_path / "run"
    mp.spawn(_worker, args=(_free_port(), str(pairs_dir), str(out), str(tmp_path)), nprocs=WORLD, join=True)
    assert (tmp_path / "ok0").is_file() and (tmp_path / "ok1").is_file()
    records = read_metrics(out)
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3]  # rank 0 only: no duplicated lines
    assert all(math.isfinite(r["loss"]) for r in losses)
    assert json.loads((out / "options.json").read_text())["world_size"] == WORLD
    assert (out / "encoder" / "model.safetensors").is_file() and (out / "checkpoint.pt").is_file()
