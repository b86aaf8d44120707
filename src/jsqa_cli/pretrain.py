"""Stage 1 of JSQA: contrastive pretraining of the encoder on JND pairs (NT-Xent), on CPU, one GPU or many.

The loop reads top to bottom: options → DDP setup → data → model → optimiser → (resume) → steps → export.
Launch on several GPUs with ``torchrun --nproc-per-node N -m jsqa_cli pretrain ...``: each rank sees its shard
of the pairs, negatives are gathered from all ranks *with* gradients, rank 0 logs, validates and saves.

Loss. The batch holds N pairs → 2N views (+N same-source hard negatives with ``hard_negatives``). For each of
the 2N anchor views the positive is its partner, the candidates are all other views of the global batch:

    ℓ_i = −log exp(s(i, p_i)/τ) / Σ_{k ≠ i, k not masked} exp(s(i, k)/τ),   s = cosine similarity

``negatives="batch"`` is plain SimCLR. ``negatives="jnd-aware"`` masks candidates whose SNR lies within the JND
of the anchor (they are as good a match as the partner), instead of pushing them away.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from jsqa_cli.model import JSQA, JSQAConfig, config_from_preset, save_model
from jsqa_cli.pairs import PairDataError, PairDataset, PairSampler, read_manifest, worker_init
from jsqa_cli.training_utils import (MetricsLog, all_reduce_mean, autocast, distributed, load_checkpoint,
                                     save_checkpoint, seed_everything, training_progress, warmup_cosine)

NEGATIVES = ("batch", "jnd-aware")
ENCODER_DIR = "encoder"
TRIVIAL_TOP1 = 0.95  # retrieval at or above this at the first validation means the task is solved by content
UNTRAINED_TOP1 = 0.5  # ...as does an untrained encoder (step 0) retrieving this many partners: near-identical members


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


@dataclass
class PretrainOptions:
    """Every option of ``jsqa pretrain`` (the CLI maps its flags one to one onto these fields)."""

    pairs: str = ""  # folder written by make_pairs
    out: str = ""  # run folder: checkpoint.pt, metrics.jsonl, options.json, encoder/
    preset: str = "small"
    config_file: str | None = None  # JSON of JSQAConfig fields overriding the preset
    projection_head: bool = True
    negatives: str = "jnd-aware"
    hard_negatives: bool = False
    temperature: float = 0.1
    batch_size: int = 32  # pairs per step per rank (2× views, 3× with hard negatives)
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int | None = None  # default: 5 % of the steps, at most 1000
    max_steps: int | None = None  # default: from epochs, else 1000
    epochs: float | None = None
    grad_clip: float = 1.0
    seed: int = 0
    workers: int = -1  # DataLoader workers per rank; -1: min(8, CPU cores)
    device: str = "auto"
    bf16: bool = True
    redraw_snr: bool = False
    val_every: int = 200
    val_max_pairs: int = 512
    checkpoint_every: int = 500
    log_every: int = 10
    resume: bool = False
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps in this invocation
    quiet: bool = False


# ------------------------------------------------------------------------------------------------ loss


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` from all ranks, gradients flowing back to each rank's own part; also this rank's offset."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x)), dist.get_rank() * x.shape[0]


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def nt_xent(z: torch.Tensor, snr: torch.Tensor, num_pairs: int, temperature: float = 0.1,
            jnd_db: float | None = None) -> torch.Tensor:
    """NT-Xent over this rank's views ``z`` = [a_0..a_{N-1}, b_0..b_{N-1}, (hard negatives...)] against the views
    of all ranks. ``jnd_db`` (jnd-aware negatives) masks candidates whose SNR is within the JND of the anchor.
    Returns the mean loss over this rank's 2N anchors; averaging gradients over ranks (DDP) then gives the
    gradient of the global mean."""
    n2 = 2 * num_pairs
    z = F.normalize(z.float(), dim=-1)
    z_all, offset = gather_with_grad(z)
    logits = z[:n2] @ z_all.T / temperature  # (2N, V_global)
    idx = torch.arange(n2, device=z.device)
    partner = offset + (idx + num_pairs) % n2
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[idx, offset + idx] = True  # never the anchor itself
    if jnd_db is not None:
        snr_all = gather_no_grad(snr.float())
        mask |= (snr[:n2, None].float() - snr_all[None, :]).abs() <= jnd_db
        mask[idx, partner] = False
    return F.cross_entropy(logits.masked_fill(mask, float("-inf")), partner)


class ContrastiveNet(nn.Module):
    """The part of JSQA that pretraining trains (encoder + projection head): what DDP wraps, so that the
    MOS head, unused here, does not stall gradient reduction."""

    def __init__(self, model: JSQA):
        super().__init__()
        self.encoder, self.projection = model.encoder, model.projection

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        emb = self.encoder(wav)
        return self.projection(emb) if self.projection is not None else emb


# ------------------------------------------------------------------------------------------------ validation


@torch.no_grad()
def embed_views(model: JSQA, loader, device: torch.device, use_autocast: bool = True):
    """Encoder embeddings and projections of every view in ``loader`` → (emb (P, V, D), proj (P, V, d), snr (P, V))."""
    model.eval()
    embs, projs, snrs = [], [], []
    for batch in loader:
        wav = batch["wav"].to(device, non_blocking=True)
        b, v, t = wav.shape
        with autocast(device, use_autocast):
            emb = model.embed(wav.reshape(b * v, t))
            proj = model.project(emb)
        embs.append(emb.float().reshape(b, v, -1).cpu())
        projs.append(proj.float().reshape(b, v, -1).cpu())
        snrs.append(batch["snr"])
    return torch.cat(embs), torch.cat(projs), torch.cat(snrs)


def retrieval_top1(za: torch.Tensor, zb: torch.Tensor) -> float:
    """Fraction of views whose nearest other view (cosine, among all 2P) is their partner."""
    z = F.normalize(torch.cat([za, zb]).float(), dim=-1)
    p = len(za)
    sim = z @ z.T
    sim.fill_diagonal_(float("-inf"))
    partner = (torch.arange(2 * p) + p) % (2 * p)
    return float((sim.argmax(dim=1) == partner).float().mean())


def alignment_uniformity(za: torch.Tensor, zb: torch.Tensor) -> tuple[float, float]:
    """Wang & Isola (2020): E‖a−b‖² over positives (lower is better), log E exp(−2‖x−y‖²) over all (lower = more
    uniform), on L2-normalised vectors."""
    a, b = F.normalize(za.float(), dim=-1), F.normalize(zb.float(), dim=-1)
    align = float((a - b).pow(2).sum(dim=1).mean())
    x = torch.cat([a, b])
    uniform = float(torch.pdist(x).pow(2).mul(-2).exp().mean().log())
    return align, uniform


def snr_order(emb: torch.Tensor, snr: torch.Tensor, components: int = 3) -> float:
    """How well the embedding orders SNR: the largest |Spearman ρ| between SNR and one of the first principal
    components of the embeddings."""
    x = emb.reshape(-1, emb.shape[-1]).double()
    x = x - x.mean(dim=0)
    q = min(components, x.shape[0] - 1, x.shape[1])
    if q < 1:
        return float("nan")
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    pcs = (x @ v[:q].T).numpy()
    s = pd.Series(snr.reshape(-1).numpy())
    rhos = [abs(s.corr(pd.Series(pcs[:, k]), method="spearman")) for k in range(q)]
    return float(np.nanmax(rhos)) if rhos else float("nan")


def validate(model: JSQA, loader, device: torch.device, use_autocast: bool = True) -> dict:
    """Validation metrics on held-out pairs (views a, b and a same-source view ≥ 2·JND from a):

    - ``val_top1``: positive-pair retrieval top-1 in the projection space the loss trains (``val_top1_encoder``:
      on encoder embeddings, what fine-tuning starts from);
    - ``val_align`` / ``val_uniform`` on encoder embeddings;
    - the JND check: ``jnd_cos`` (mean cosine of JND pairs), ``gap_cos`` (same speech + noise crop, SNR gap ≥
      2·JND), ``jnd_margin`` = jnd_cos − gap_cos (> 0: the encoder hears SNR differences beyond the JND as
      bigger than those within it), and ``snr_rank`` (|Spearman| of SNR vs the top principal components).
    """
    emb, proj, snr = embed_views(model, loader, device, use_autocast)
    align, uniform = alignment_uniformity(emb[:, 0], emb[:, 1])
    e = F.normalize(emb, dim=-1)
    jnd_cos = float((e[:, 0] * e[:, 1]).sum(-1).mean())
    gap_cos = float((e[:, 0] * e[:, 2]).sum(-1).mean()) if emb.shape[1] > 2 else float("nan")
    return {"val_top1": retrieval_top1(proj[:, 0], proj[:, 1]),
            "val_top1_encoder": retrieval_top1(emb[:, 0], emb[:, 1]),
            "val_align": align, "val_uniform": uniform, "jnd_cos": jnd_cos, "gap_cos": gap_cos,
            "jnd_margin": jnd_cos - gap_cos, "snr_rank": snr_order(emb, snr), "val_pairs": len(emb)}


# ------------------------------------------------------------------------------------------------ the loop


def _options(options: PretrainOptions | None, overrides: dict) -> PretrainOptions:
    opts = options or PretrainOptions()
    known = {f.name for f in fields(PretrainOptions)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown pretrain option(s): {', '.join(sorted(unknown))}")
    opts = PretrainOptions(**{**asdict(opts), **overrides})
    if not opts.pairs or not opts.out:
        raise ValueError("pretrain needs a pairs folder (--pairs) and a run folder (-o)")
    if opts.negatives not in NEGATIVES:
        raise ValueError(f"--negatives must be one of {', '.join(NEGATIVES)}, not {opts.negatives!r}")
    if opts.batch_size < 2 or opts.temperature <= 0:
        raise ValueError("--batch-size must be at least 2 and --temperature positive")
    return opts


def _model_config(opts: PretrainOptions) -> JSQAConfig:
    overrides = {}
    if opts.config_file:
        path = Path(opts.config_file)
        try:
            overrides = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such config file") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        known = {f.name for f in fields(JSQAConfig)}
        bad = set(overrides) - known - {"model_type", "architectures", "jsqa_version", "metadata"}
        if bad:
            raise ValueError(f"{path}: unknown model config field(s) {', '.join(sorted(bad))}")
        overrides = {k: v for k, v in overrides.items() if k in known}
    preset = overrides.pop("preset", opts.preset)
    return config_from_preset(preset, **{**overrides, "projection_head": opts.projection_head})


def _loader(dataset, sampler, batch_size: int, workers: int, device: torch.device, seed: int, drop_last: bool):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0, worker_init_fn=worker_init,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed))  # never draws from the global RNG (exact resume)


def pretrain(options: PretrainOptions | None = None, **overrides) -> Path:
    """Pretrain an encoder on a pairs folder; returns ``RUN_DIR/encoder`` (a model folder ``finetune`` takes)."""
    opts = _options(options, overrides)
    with distributed(opts.device) as d:
        return _pretrain(opts, d)


def _pretrain(opts: PretrainOptions, d) -> Path:
    run_dir, pairs_dir = Path(opts.out), Path(opts.pairs)
    say = (lambda *a: None) if (opts.quiet or not d.is_main) else print
    # ---- data
    manifest, settings = read_manifest(pairs_dir)
    s = settings.get("settings", {})
    jnd_db = float(s.get("jnd_db", 3.0))
    snr_range = (float(s.get("snr_min", -5.0)), float(s.get("snr_max", 20.0)))
    train_rows, val_rows = manifest[manifest.split == "train"], manifest[manifest.split == "val"]
    if len(train_rows) < opts.batch_size * d.world_size:
        raise ValueError(f"{pairs_dir}: {len(train_rows)} training pairs, fewer than one batch "
                         f"({opts.batch_size} × {d.world_size} rank(s))")
    steps_per_epoch = len(train_rows) // (opts.batch_size * d.world_size)
    max_steps = opts.max_steps or (math.ceil(opts.epochs * steps_per_epoch) if opts.epochs else 1000)
    warmup = opts.warmup_steps if opts.warmup_steps is not None else min(1000, max_steps // 20)
    workers = default_workers() if opts.workers < 0 else opts.workers
    common = dict(seed=opts.seed, jnd_db=jnd_db, snr_range=snr_range, sample_rate=int(s.get("sample_rate", 16000)))
    train_set = PairDataset(train_rows, pairs_dir, hard_negatives=opts.hard_negatives, redraw_snr=opts.redraw_snr,
                            **common)
    val_set = PairDataset(val_rows.iloc[: opts.val_max_pairs], pairs_dir, hard_negatives=True, **common)

    # ---- model and optimiser
    seed_everything(opts.seed)
    model = JSQA(_model_config(opts)).to(d.device)
    net = ContrastiveNet(model)
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    params = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr,
                                  fused=d.device.type == "cuda")
    scheduler = warmup_cosine(optimizer, warmup, max_steps)
    step = 0
    if opts.resume:
        ckpt = load_checkpoint(run_dir, net, optimizer, scheduler)
        step = int(ckpt["step"])
        say(f"Resumed {run_dir} at step {step}.")
    run_dir.mkdir(parents=True, exist_ok=True)
    if d.is_main:
        (run_dir / "options.json").write_text(json.dumps({**asdict(opts), "max_steps": max_steps, "warmup": warmup,
                                                          "world_size": d.world_size}, indent=2) + "\n")
    log = MetricsLog(run_dir, enabled=d.is_main, resume=opts.resume)

    sampler = PairSampler(len(train_set), opts.seed, d.rank, d.world_size, start=step * opts.batch_size)
    loader = _loader(train_set, sampler, opts.batch_size, workers, d.device, opts.seed, drop_last=True)
    val_loader = _loader(val_set, [(0, i) for i in range(len(val_set))], opts.batch_size, min(workers, 4),
                         d.device, opts.seed, drop_last=False) if len(val_set) >= 2 else None
    jnd_mask = jnd_db if opts.negatives == "jnd-aware" else None
    use_bf16 = opts.bf16
    stop_at = min(max_steps, step + opts.stop_after) if opts.stop_after else max_steps
    say(f"Pretraining {model.config.preset} ({model.num_parameters / 1e6:.2f} M parameters) on "
        f"{len(train_set)} pairs ({s.get('pairing', '?')}), {opts.negatives} negatives"
        f"{' + hard negatives' if opts.hard_negatives else ''}, batch {opts.batch_size}×{d.world_size} rank(s), "
        f"{max_steps} steps, device {d.device}, {workers} loader workers.")

    state = {"first_val": None, "last_val": {}}

    def run_validation(at_step: int) -> None:
        if val_loader is not None and d.is_main:
            m = validate(model, val_loader, d.device, use_bf16)
            log.log(step=at_step, **m)
            state["last_val"] = m
            if state["first_val"] is None:
                state["first_val"] = m
                if (m["val_top1"] >= TRIVIAL_TOP1 and at_step <= opts.val_every) or (
                        at_step == 0 and m["val_top1"] >= UNTRAINED_TOP1):
                    msg = (f"validation retrieval top-1 is {100 * m['val_top1']:.1f}% at step {at_step}"
                           f"{' (untrained encoder)' if at_step == 0 else ''}: the pretext task is solved "
                           "trivially, most likely by matching content (same speech/noise crop), not quality. "
                           "Prefer `--pairing cross-source` pairs and/or `--negatives jnd-aware`.")
                    warnings.warn(msg, stacklevel=2)
                    log.log(step=at_step, warning=msg)
            model.train()
        if d.enabled:
            dist.barrier()

    if step == 0:
        run_validation(0)

    # ---- steps
    net.train()
    batches = iter(loader)
    t_log, pairs_since = time.time(), 0
    with training_progress(enabled=d.is_main, quiet=opts.quiet) as progress:
        task = progress.add_task("pretrain", total=max_steps, completed=step, status="")
        while step < stop_at:
            try:
                batch = next(batches)
            except PairDataError as e:  # re-raised from a worker: keep it one line
                raise PairDataError(str(e)) from None
            wav = batch["wav"].to(d.device, non_blocking=True)  # (B, V, T)
            snr = batch["snr"].to(d.device, non_blocking=True)  # (B, V)
            b, v, t = wav.shape
            views, view_snr = wav.transpose(0, 1).reshape(v * b, t), snr.transpose(0, 1).reshape(v * b)
            with autocast(d.device, use_bf16):
                z = net(views)
            loss = nt_xent(z, view_snr, b, opts.temperature, jnd_mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            pairs_since += b * d.world_size

            if step % opts.log_every == 0 or step == stop_at:
                loss_value = all_reduce_mean(float(loss.detach()), d)
                now = time.time()
                log.log(step=step, loss=loss_value, lr=scheduler.get_last_lr()[0], grad_norm=float(grad_norm),
                        epoch=step * opts.batch_size // sampler.per_rank,
                        pairs_per_s=round(pairs_since / max(now - t_log, 1e-9), 2))
                t_log, pairs_since = now, 0
                progress.update(task, completed=step, status=f"loss {loss_value:.4f}")
            if step % opts.val_every == 0 or step == max_steps:
                run_validation(step)
                t_log, pairs_since = time.time(), 0  # throughput counts training only
            if d.is_main and (step % opts.checkpoint_every == 0 or step == stop_at):
                save_checkpoint(run_dir, net, optimizer, scheduler, step, extra={"options": asdict(opts)})
            progress.update(task, completed=step)

    # ---- export
    encoder_dir = run_dir / ENCODER_DIR
    if d.is_main and step >= max_steps:
        final = {k: round(v, 4) for k, v in state["last_val"].items() if isinstance(v, float)}
        save_model(model, encoder_dir, metadata={
            "stage": "pretrained", "steps": step, "pairs": str(pairs_dir.resolve()),
            "pairing": s.get("pairing"), "train_pairs": len(train_set), "negatives": opts.negatives,
            "hard_negatives": opts.hard_negatives, "temperature": opts.temperature,
            "batch_size": opts.batch_size * d.world_size, "lr": opts.lr, "seed": opts.seed, "jnd_db": jnd_db,
            "validation": final})
        say(f"Encoder saved to {encoder_dir} (val retrieval top-1 {final.get('val_top1', float('nan')):.3f}, "
            f"JND margin {final.get('jnd_margin', float('nan')):.3f}).")
    elif d.is_main:
        say(f"Stopped at step {step} of {max_steps}; continue with --resume.")
    if d.enabled:
        dist.barrier()
    return encoder_dir
