"""Stage 1 of JSQA: contrastive pretraining of the encoder on JND pairs (NT-Xent), on CPU, one GPU or many.

This module is the method (loss, pair data, validation); the loop is :func:`jsqa_cli.train.train`, shared with
fine-tuning: options → DDP setup → run folder → data → model → ``train(PretrainTask)`` → export.
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
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from jsqa_cli.distributed import autocast, default_workers, distributed
from jsqa_cli.model import JSQA, JSQAConfig, config_from_preset, save_model
from jsqa_cli.pairs import PairDataError, PairDataset, PairSampler, read_manifest, worker_init
from jsqa_cli.train import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    OPTIONS_NAME,
    Task,
    check_options,
    param_groups,
    prepare_run_folder,
    seed_everything,
    train,
    write_options,
)

NEGATIVES = ("batch", "jnd-aware")
ENCODER_DIR = "encoder"
TRIVIAL_TOP1 = 0.95  # retrieval at or above this at the first validation means the task is solved by content
UNTRAINED_TOP1 = 0.5  # ...as does an untrained encoder (step 0) retrieving this many partners: near-identical members
DEFAULT_STEPS = 1000  # without --steps or --epochs


@dataclass
class PretrainOptions:
    """Every option of ``jsqa pretrain`` (the CLI maps its flags one to one onto these fields; the training
    options are spelt as in ``FinetuneOptions``)."""

    pairs: str = ""  # folder written by make_pairs
    output: str = ""  # run folder: checkpoint.pt, metrics.jsonl, options.json, encoder/
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
    steps: int | None = None  # default: from epochs, else DEFAULT_STEPS
    epochs: float | None = None
    grad_clip: float = 1.0  # gradient-norm limit; 0: no clipping
    seed: int = 0
    workers: int | None = None  # DataLoader workers per rank; None: distributed.default_workers(device)
    device: str = "auto"
    bf16: bool = True
    redraw_snr: bool = False
    eval_every: int = 200  # validate every N steps (and at step 0 and the last step); 0: only then
    val_max_pairs: int = 512
    checkpoint_every: int = 500  # 0: only when this invocation ends
    log_every: int = 10  # 0: no loss lines
    resume: bool = False
    overwrite: bool = False
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


def nt_xent(
    z: torch.Tensor, snr: torch.Tensor, num_pairs: int, temperature: float = 0.1, jnd_db: float | None = None
) -> torch.Tensor:
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
    return {
        "val_top1": retrieval_top1(proj[:, 0], proj[:, 1]),
        "val_top1_encoder": retrieval_top1(emb[:, 0], emb[:, 1]),
        "val_align": align,
        "val_uniform": uniform,
        "jnd_cos": jnd_cos,
        "gap_cos": gap_cos,
        "jnd_margin": jnd_cos - gap_cos,
        "snr_rank": snr_order(emb, snr),
        "val_pairs": len(emb),
    }


# ------------------------------------------------------------------------------------------------ the task


def _options(options: PretrainOptions | None, overrides: dict) -> PretrainOptions:
    opts = options or PretrainOptions()
    known = {f.name for f in fields(PretrainOptions)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown pretrain option(s): {', '.join(sorted(unknown))}")
    opts = PretrainOptions(**{**asdict(opts), **overrides})
    if not opts.pairs or not opts.output:
        raise ValueError("pretrain needs a pairs folder (--pairs) and a run folder (-o)")
    if opts.negatives not in NEGATIVES:
        raise ValueError(f"--negatives must be one of {', '.join(NEGATIVES)}, not {opts.negatives!r}")
    if opts.batch_size < 2 or opts.temperature <= 0:
        raise ValueError("--batch-size must be at least 2 and --temperature positive")
    if opts.epochs is not None and opts.epochs <= 0:
        raise ValueError(f"--epochs {opts.epochs}: must be positive")
    if opts.val_max_pairs < 0:
        raise ValueError(f"--val-max-pairs {opts.val_max_pairs}: must not be negative")
    check_options(opts)
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
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=worker_init,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )  # never draws from the global RNG (exact resume)


class PretrainTask(Task):
    """NT-Xent on JND pairs, plugged into :func:`jsqa_cli.train.train`: the batches, the loss, validation."""

    name, items, eval_at_start = "pretrain", "pairs", True

    def __init__(
        self, opts: PretrainOptions, d, model: JSQA, train_set, val_set, workers: int, jnd_db: float, steps: int
    ):
        self.opts, self.d, self.jsqa, self.workers, self.steps = opts, d, model, workers, steps
        self.model = ContrastiveNet(model)  # what trains and is checkpointed: encoder + projection head
        self.net = self.model
        if d.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[d.device.index] if d.device.type == "cuda" else None
            )
        self.train_set = train_set
        self.val_loader = (
            _loader(
                val_set,
                [(0, i) for i in range(len(val_set))],
                opts.batch_size,
                min(workers, 4),
                d.device,
                opts.seed,
                drop_last=False,
            )
            if len(val_set) >= 2
            else None
        )
        self.jnd_mask = jnd_db if opts.negatives == "jnd-aware" else None
        self.per_rank = len(train_set) // d.world_size
        self.first_val = None

    def param_groups(self) -> list[dict]:
        return param_groups(self.model, {"encoder": self.opts.lr}, weight_decay=self.opts.weight_decay)

    def batches(self, step: int):
        sampler = PairSampler(
            len(self.train_set), self.opts.seed, self.d.rank, self.d.world_size, start=step * self.opts.batch_size
        )
        loader = iter(
            _loader(
                self.train_set,
                sampler,
                self.opts.batch_size,
                self.workers,
                self.d.device,
                self.opts.seed,
                drop_last=True,
            )
        )
        while True:
            try:
                yield next(loader)
            except PairDataError as e:  # re-raised from a worker: keep it one line
                raise PairDataError(str(e)) from None

    def forward(self, batch, step: int) -> torch.Tensor:
        self.net.train()
        wav = batch["wav"].to(self.d.device, non_blocking=True)  # (B, V, T): views a, b (, hard negative)
        b, v, t = wav.shape
        return self.net(wav.transpose(0, 1).reshape(v * b, t))

    def loss(self, z: torch.Tensor, batch) -> tuple[torch.Tensor, int]:
        snr = batch["snr"].to(self.d.device, non_blocking=True)  # (B, V)
        b, v = snr.shape
        return nt_xent(z, snr.transpose(0, 1).reshape(v * b), b, self.opts.temperature, self.jnd_mask), b

    def evaluate(self, step: int) -> dict:
        m = {}
        if self.val_loader is not None and self.d.is_main:
            m = validate(self.jsqa, self.val_loader, self.d.device, self.opts.bf16)
            if self.first_val is None:
                self.first_val = m["val_top1"]
                if (m["val_top1"] >= TRIVIAL_TOP1 and step <= (self.opts.eval_every or self.steps)) or (
                    step == 0 and m["val_top1"] >= UNTRAINED_TOP1
                ):
                    msg = (
                        f"validation retrieval top-1 is {100 * m['val_top1']:.1f}% at step {step}"
                        f"{' (untrained encoder)' if step == 0 else ''}: the pretext task is solved "
                        "trivially, most likely by matching content (same speech/noise crop), not quality. "
                        "Prefer `--pairing cross-source` pairs and/or `--negatives jnd-aware`."
                    )
                    warnings.warn(msg, stacklevel=2)
                    m = {**m, "warning": msg}
        if self.d.enabled:
            dist.barrier()
        return m

    def log_extra(self, step: int) -> dict:
        return {"epoch": step * self.opts.batch_size // self.per_rank}

    def state_dict(self) -> dict:
        return {"first_val": self.first_val}

    def load_state_dict(self, state: dict) -> None:
        self.first_val = state.get("first_val")


# ------------------------------------------------------------------------------------------------ pretrain


RUN_ARTEFACTS = (CHECKPOINT_NAME, METRICS_NAME, OPTIONS_NAME, ENCODER_DIR)


def pretrain(options: PretrainOptions | None = None, **overrides) -> Path:
    """Pretrain an encoder on a pairs folder; returns ``RUN_DIR/encoder`` (a model folder ``finetune`` takes)."""
    opts = _options(options, overrides)
    with distributed(opts.device) as d:
        return _pretrain(opts, d)


def _pretrain(opts: PretrainOptions, d) -> Path:
    pairs_dir = Path(opts.pairs)
    run_dir = prepare_run_folder(
        opts.output,
        RUN_ARTEFACTS,
        CHECKPOINT_NAME,
        resume=opts.resume,
        overwrite=opts.overwrite,
        what="pretraining run",
        d=d,
    )
    say = (lambda *a: None) if (opts.quiet or not d.is_main) else print
    # ---- data
    manifest, settings = read_manifest(pairs_dir)
    s = settings.get("settings", {})
    jnd_db = float(s.get("jnd_db", 3.0))
    snr_range = (float(s.get("snr_min", -5.0)), float(s.get("snr_max", 20.0)))
    train_rows, val_rows = manifest[manifest.split == "train"], manifest[manifest.split == "val"]
    if len(train_rows) < opts.batch_size * d.world_size:
        raise ValueError(
            f"{pairs_dir}: {len(train_rows)} training pairs, fewer than one batch "
            f"({opts.batch_size} × {d.world_size} rank(s))"
        )
    steps_per_epoch = len(train_rows) // (opts.batch_size * d.world_size)
    steps = opts.steps or (max(1, math.ceil(opts.epochs * steps_per_epoch)) if opts.epochs else DEFAULT_STEPS)
    warmup = opts.warmup_steps if opts.warmup_steps is not None else min(1000, steps // 20)
    workers = default_workers(opts.device) if opts.workers is None else opts.workers
    common = dict(seed=opts.seed, jnd_db=jnd_db, snr_range=snr_range, sample_rate=int(s.get("sample_rate", 16000)))
    train_set = PairDataset(
        train_rows, pairs_dir, hard_negatives=opts.hard_negatives, redraw_snr=opts.redraw_snr, **common
    )
    val_set = PairDataset(val_rows.iloc[: opts.val_max_pairs], pairs_dir, hard_negatives=True, **common)

    # ---- model, then the shared loop
    seed_everything(opts.seed)
    model = JSQA(_model_config(opts)).to(d.device)
    task = PretrainTask(opts, d, model, train_set, val_set, workers, jnd_db, steps)
    write_options(
        run_dir,
        {**asdict(opts), "steps": steps, "warmup_steps": warmup, "workers": workers, "world_size": d.world_size},
        d,
    )
    say(
        f"Pretraining {model.config.preset} ({model.num_parameters / 1e6:.2f} M parameters) on "
        f"{len(train_set)} pairs ({s.get('pairing', '?')}), {opts.negatives} negatives"
        f"{' + hard negatives' if opts.hard_negatives else ''}, batch {opts.batch_size}×{d.world_size} rank(s), "
        f"{steps} steps, device {d.device}, {workers} loader workers."
    )
    result = train(task, opts, d, run_dir, steps, warmup)

    # ---- export
    encoder_dir = run_dir / ENCODER_DIR
    if d.is_main and result.finished:
        final = {k: round(v, 4) for k, v in result.last_eval.items() if isinstance(v, float)}
        save_model(
            model,
            encoder_dir,
            metadata={
                "stage": "pretrained",
                "steps": result.step,
                "pairs": str(pairs_dir.resolve()),
                "pairing": s.get("pairing"),
                "train_pairs": len(train_set),
                "negatives": opts.negatives,
                "hard_negatives": opts.hard_negatives,
                "temperature": opts.temperature,
                "batch_size": opts.batch_size * d.world_size,
                "lr": opts.lr,
                "seed": opts.seed,
                "hardware": d.hardware,
                "jnd_db": jnd_db,
                "validation": final,
            },
        )
        say(
            f"Encoder saved to {encoder_dir} (val retrieval top-1 {final.get('val_top1', float('nan')):.3f}, "
            f"JND margin {final.get('jnd_margin', float('nan')):.3f})."
        )
    elif d.is_main:
        say(f"Stopped at step {result.step} of {steps}; continue with --resume.")
    if d.enabled:
        dist.barrier()
    return encoder_dir
