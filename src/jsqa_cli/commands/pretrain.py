"""``jsqa pretrain``: contrastive pretraining on JND pairs (logic in :mod:`jsqa_cli.pretrain`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from jsqa_cli.commands._common import DEVICE_HELP, WORKERS_HELP, check_device, console, one_line_errors, resolve_workers


def register(app: typer.Typer) -> None:
    app.command("pretrain", no_args_is_help=True)(pretrain_command)


@one_line_errors
def pretrain_command(
    pairs: Path = typer.Option(..., "--pairs", help="Pairs folder written by `jsqa make-pairs`."),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Run folder: checkpoint.pt, metrics.jsonl, options.json, encoder/."
    ),
    preset: str = typer.Option("small", "--preset", help="Encoder size: tiny, small (CPU), base (≈26 M, paper)."),
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="JSON of model config fields (overrides the preset)."
    ),
    projection_head: bool = typer.Option(
        True,
        "--projection-head/--no-projection-head",
        help="MLP projection head for the loss (fine-tuning uses the encoder).",
    ),
    negatives: str = typer.Option(
        "jnd-aware",
        "--negatives",
        help="batch: every other view is a negative "
        "(SimCLR). jnd-aware: views within the JND of the anchor's SNR are masked.",
    ),
    hard_negatives: bool = typer.Option(
        False, "--hard-negatives", help="Add a same-source view ≥ 2·JND away from each member a as an extra negative."
    ),
    temperature: float = typer.Option(0.1, "--temperature", help="NT-Xent temperature."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Pairs per step per GPU/process."),
    lr: float = typer.Option(3e-4, "--lr", help="Peak AdamW learning rate."),
    weight_decay: float = typer.Option(
        0.05, "--weight-decay", help="AdamW weight decay (weights, not biases or norms)."
    ),
    warmup_steps: Optional[int] = typer.Option(
        None, "--warmup-steps", help="Linear warm-up, then cosine decay. Default: 5% of the steps (≤ 1000)."
    ),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="Optimiser steps (at least 1). Default: from --epochs, else 1000."
    ),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the training pairs (sets --steps)."),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Gradient-norm clipping (0: off)."),
    seed: int = typer.Option(0, "--seed"),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help=WORKERS_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    bf16: bool = typer.Option(True, "--bf16/--no-bf16", help="bf16 autocast on CUDA."),
    redraw_snr: bool = typer.Option(
        False, "--redraw-snr", help="Fresh SNRs and speech level every epoch after the first (same crops)."
    ),
    eval_every: int = typer.Option(
        200, "--eval-every", help="Validate every N steps, besides step 0 and the last (0: only then)."
    ),
    checkpoint_every: int = typer.Option(
        500, "--checkpoint-every", help="Checkpoint every N steps, besides the last of the invocation (0: only then)."
    ),
    log_every: int = typer.Option(10, "--log-every", help="Write a metrics.jsonl line every N steps (0: off)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in -o exactly where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again in a folder that holds a run."),
    stop_after: Optional[int] = typer.Option(
        None,
        "--stop-after",
        help="Stop (checkpointed) after N steps of this invocation, e.g. to fit a job time limit; then --resume.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Pretrain the JSQA encoder contrastively on JND pairs; exports RUN_DIR/encoder for `jsqa finetune`.

    Example: jsqa pretrain --pairs pairs/ -o runs/pre --preset small --steps 5000

    Several GPUs: torchrun --nproc-per-node 4 -m jsqa_cli pretrain --pairs pairs/ -o runs/pre --preset base
    """
    device = check_device(device)
    workers = resolve_workers(workers, device)
    from jsqa_cli.pretrain import pretrain

    encoder = pretrain(
        pairs=str(pairs),
        output=str(output),
        preset=preset,
        config_file=str(config_file) if config_file else None,
        projection_head=projection_head,
        negatives=negatives,
        hard_negatives=hard_negatives,
        temperature=temperature,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        steps=steps,
        epochs=epochs,
        grad_clip=grad_clip,
        seed=seed,
        workers=workers,
        device=device,
        bf16=bf16,
        redraw_snr=redraw_snr,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        resume=resume,
        overwrite=overwrite,
        stop_after=stop_after,
        quiet=quiet,
    )
    if encoder.is_dir():
        console.print(f"Pretrained encoder: {encoder}", highlight=False)
