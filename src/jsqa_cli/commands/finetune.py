"""``jsqa finetune``: MOS fine-tuning of a pretrained encoder or from scratch (logic in :mod:`jsqa_cli.finetune`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer

from jsqa_cli.commands._common import DEVICE_HELP, WORKERS_HELP, check_device, console, one_line_errors, resolve_workers


def register(app: typer.Typer) -> None:
    app.command("finetune", no_args_is_help=True)(finetune_command)


@one_line_errors
def finetune_command(
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Model folder to write (config.json + "
        "model.safetensors of the best validation step); the run's checkpoint and metrics "
        "go to OUTPUT/training/.",
    ),
    nisqa_root: Optional[Path] = typer.Option(
        None, "--nisqa-root", help="NISQA_Corpus folder (with NISQA_corpus_file.csv)."
    ),
    train_db: Optional[List[str]] = typer.Option(
        None, "--train-db", help="NISQA training database(s) (repeat). Default: NISQA_TRAIN_SIM and NISQA_TRAIN_LIVE."
    ),
    val_db: Optional[List[str]] = typer.Option(
        None, "--val-db", help="NISQA validation database(s) (repeat). Default: NISQA_VAL_SIM and NISQA_VAL_LIVE."
    ),
    train: Optional[List[Path]] = typer.Option(
        None,
        "--train",
        help="Labelled CSV instead of NISQA: columns path "
        "(or file) and mos, optional condition and group; relative paths "
        "from the CSV's folder. Repeat to train on several CSVs as one set.",
    ),
    val: Optional[List[Path]] = typer.Option(
        None, "--val", help="Labelled CSV for validation (with --train). Repeat to validate on several CSVs as one set."
    ),
    init: Optional[str] = typer.Option(
        None,
        "--init",
        help="Pretrained encoder: a folder from `jsqa pretrain` (RUN/encoder), a bundled name or a Hub id.",
    ),
    from_scratch: bool = typer.Option(
        False,
        "--from-scratch",
        help="Random weights (the paper's baseline): the network of --init if given, else of --preset.",
    ),
    preset: str = typer.Option(
        "small", "--preset", help="Network size for --from-scratch without --init: tiny, small, base."
    ),
    projection_head: bool = typer.Option(
        False,
        "--projection-head/--no-projection-head",
        help="Keep the "
        "pretrained projection head and put the MOS head on its output (default: "
        "drop it, MOS head on the encoder output).",
    ),
    heads: Optional[List[str]] = typer.Option(
        None,
        "--heads",
        help="Extra 1..5 heads to train beside MOS, comma-separated (e.g. sig,bak or aux_dnsmos_ovrl), each on the "
        "labels' column of its name (empty cells: no loss). Heads --init lacks start random; its others are dropped.",
    ),
    head_weight: Optional[List[str]] = typer.Option(
        None,
        "--head-weight",
        metavar="W|NAME=W",
        help="Loss weight of the extra heads relative to MOS (default 1); NAME=W for one head (repeat).",
    ),
    distill: Optional[Path] = typer.Option(
        None,
        "--distill",
        help="A teacher's embeddings of the training files (safetensors: `embeddings` N×D and the N paths; "
        "jsqa_cli.labels.save_teacher_embeddings): also pull a linear map of the model's embedding towards them.",
    ),
    distill_weight: float = typer.Option(
        0.0, "--distill-weight", help="Weight of the --distill loss, 1 - cosine (0: off; --distill needs it > 0)."
    ),
    steps: int = typer.Option(3000, "--steps", help="Optimiser steps (at least 1; early stopping may end sooner)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Training crops per step per GPU/process."),
    lr: float = typer.Option(1e-4, "--lr", help="AdamW learning rate of the encoder (and a kept projection head)."),
    lr_head: float = typer.Option(
        1e-3, "--lr-head", help="AdamW learning rate of the MOS head and extra heads (and flatness/phase inputs)."
    ),
    lr_flatness: Optional[float] = typer.Option(
        None,
        "--lr-flatness",
        help="AdamW learning rate of the flatness input, for models that have one (default: --lr-head's).",
    ),
    weight_decay: float = typer.Option(
        0.01, "--weight-decay", help="AdamW weight decay (weights, not biases or norms)."
    ),
    warmup_steps: int = typer.Option(100, "--warmup-steps", help="Linear warm-up, then cosine decay."),
    freeze_encoder_steps: int = typer.Option(
        0, "--freeze-encoder-steps", help="Train only the MOS head for the first N steps."
    ),
    freeze: Optional[List[str]] = typer.Option(
        None,
        "--freeze",
        help="Hold for the whole run, comma-separated: encoder (with its flatness/phase inputs), mos (the MOS head). "
        "--freeze encoder,mos --heads sig,bak adds heads to a model and leaves its MOS as it was.",
    ),
    loss: str = typer.Option("mse", "--loss", help="mse or l1."),
    rank_weight: float = typer.Option(
        0.0,
        "--rank-weight",
        help="Also fit the score differences between versions "
        "of one clean reference (rows sharing a `group` column, e.g. from "
        "training/simulate_mos.py --versions), with this weight (0: off).",
    ),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Gradient-norm clipping (0: off)."),
    crop: Tuple[float, float] = typer.Option(
        (4.0, 6.0),
        "--crop",
        metavar="MIN MAX",
        help="Random training crop length range in seconds (shorter files are used whole).",
    ),
    eval_every: int = typer.Option(
        200, "--eval-every", help="Validate every N steps, besides the last (0: only then)."
    ),
    early_stop: str = typer.Option(
        "pcc", "--early-stop", help="Validation metric that picks the best step and stops early: pcc or rmse."
    ),
    patience: int = typer.Option(5, "--patience", help="Stop after N validations without improvement (0: never)."),
    val_batch_size: int = typer.Option(32, "--val-batch-size", help="Windows per batch when validating."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help=WORKERS_HELP),
    cache_audio: bool = typer.Option(
        False,
        "--cache-audio",
        help="Decode the training files once and keep them "
        "in RAM as 16-bit samples (≈ 115 MB per hour of audio; worth it for small "
        "corpora).",
    ),
    bf16: bool = typer.Option(True, "--bf16/--no-bf16", help="bf16 autocast on CUDA."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in -o exactly where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again in a folder that holds a run or model."),
    stop_after: Optional[int] = typer.Option(
        None,
        "--stop-after",
        help="Stop (checkpointed) after N steps of this invocation, e.g. to fit a job time limit; then --resume.",
    ),
    checkpoint_every: int = typer.Option(
        200, "--checkpoint-every", help="Checkpoint every N steps, besides the last of the invocation (0: only then)."
    ),
    log_every: int = typer.Option(20, "--log-every", help="Write a metrics.jsonl line every N steps (0: off)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fine-tune a MOS predictor: a pretrained encoder (--init) or the same network from scratch.

    Example: jsqa finetune --nisqa-root NISQA_Corpus --init runs/pre/encoder -o models/jsqa-nisqa

    Labelled CSVs: jsqa finetune --train train.csv --val val.csv --from-scratch --preset small -o models/scratch

    Several GPUs: torchrun --nproc-per-node 4 -m jsqa_cli finetune --nisqa-root NISQA_Corpus --init runs/pre/encoder
    -o models/m
    """
    device = check_device(device)
    workers = resolve_workers(workers, device)
    from jsqa_cli.finetune import finetune, parse_head_weight
    from jsqa_cli.labels import NISQA_TRAIN_DBS, NISQA_VAL_DBS

    folder = finetune(
        output=str(output),
        nisqa_root=str(nisqa_root) if nisqa_root else None,
        train_db=tuple(train_db or NISQA_TRAIN_DBS),
        val_db=tuple(val_db or NISQA_VAL_DBS),
        train_csv=tuple(map(str, train)) if train else None,
        val_csv=tuple(map(str, val)) if val else None,
        init=init,
        from_scratch=from_scratch,
        preset=preset,
        projection_head=projection_head,
        heads=tuple(h for group in heads or () for h in group.split(",")),
        head_weight=parse_head_weight(head_weight or ()),
        distill=str(distill) if distill else None,
        distill_weight=distill_weight,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        lr_head=lr_head,
        lr_flatness=lr_flatness,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        freeze_encoder_steps=freeze_encoder_steps,
        freeze=tuple(freeze or ()),
        loss=loss,
        rank_weight=rank_weight,
        grad_clip=grad_clip,
        crop_s=tuple(crop),
        eval_every=eval_every,
        early_stop=early_stop,
        patience=patience,
        val_batch_size=val_batch_size,
        seed=seed,
        device=device,
        workers=workers,
        cache_audio=cache_audio,
        bf16=bf16,
        resume=resume,
        overwrite=overwrite,
        stop_after=stop_after,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        quiet=quiet,
    )
    if (folder / "config.json").is_file() and not quiet:
        console.print(f"Model folder: {folder}  (score it: jsqa score --model {folder} FILES)", highlight=False)
