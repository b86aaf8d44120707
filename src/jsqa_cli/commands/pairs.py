"""``jsqa make-pairs``: draw JND speech+noise pairs into a manifest (logic in :mod:`jsqa_cli.pairs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from jsqa_cli.commands._common import WORKERS_HELP, console, one_line_errors, resolve_workers


def register(app: typer.Typer) -> None:
    app.command("make-pairs", no_args_is_help=True)(make_pairs_command)


@one_line_errors
def make_pairs_command(
    speech: list[Path] = typer.Option(
        ...,
        "--speech",
        help="Clean speech folder(s), files, or .txt lists of files, "
        "searched recursively "
        "(the LibriSpeech tree works as is). Repeat the option for several.",
    ),
    noise: list[Path] = typer.Option(
        ...,
        "--noise",
        help="Noise folder(s) or files (long multi-channel "
        "backgrounds such as CHiME-3 work: a channel and crop are drawn per pair).",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Pairs folder to write (pairs.csv, pairs.json, audio/)."),
    num_pairs: int = typer.Option(10_000, "--num-pairs", "-n", help="Pairs to draw (train + validation)."),
    jnd_db: float = typer.Option(3.0, "--jnd-db", help="Largest SNR difference within a pair (the JND), dB."),
    snr_min: float = typer.Option(-5.0, "--snr-min", help="Lowest SNR, dB."),
    snr_max: float = typer.Option(20.0, "--snr-max", help="Highest SNR, dB."),
    seconds: float = typer.Option(
        4.0, "--seconds", help="Crop length. Speech shorter than this is skipped; noise shorter than this is looped."
    ),
    sample_rate: int = typer.Option(16_000, "--sample-rate", help="Rate of the mixtures."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same pairs."),
    val_fraction: float = typer.Option(
        0.05,
        "--val-fraction",
        help="Fraction of pairs (and of speech files) held out for validation; no speech file is in both splits.",
    ),
    pairing: str = typer.Option(
        "cross-source",
        "--pairing",
        help="cross-source: different utterances and noise "
        "crops (only quality can match them; default). same-source: same speech and noise "
        "crop, only the SNR differs (solvable by content matching).",
    ),
    write_audio: bool = typer.Option(False, "--write-audio", help="Also write each pair as two 16-bit FLACs."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help=WORKERS_HELP),
) -> None:
    """Draw JND audio pairs (speech + noise at SNRs within the JND) into a manifest for `jsqa pretrain`.

    Example: jsqa make-pairs --speech LibriSpeech/train-clean-100 --noise CHiME3/data/audio/16kHz/backgrounds
    -o pairs/ --num-pairs 130000 --workers 8
    """
    workers = resolve_workers(workers)
    from jsqa_cli.pairs import make_pairs
    from jsqa_cli.progress import progress_bar

    with progress_bar(console=console, transient=True) as bar:
        task = bar.add_task("drawing pairs", total=num_pairs, status="")
        summary = make_pairs(
            speech,
            noise,
            output,
            num_pairs=num_pairs,
            jnd_db=jnd_db,
            snr_min=snr_min,
            snr_max=snr_max,
            seconds=seconds,
            sample_rate=sample_rate,
            seed=seed,
            val_fraction=val_fraction,
            pairing=pairing,
            write_audio=write_audio,
            workers=workers,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    sk, src = summary["skipped"], summary["sources"]
    console.print(
        f"[bold]{summary['pairs']}[/] {pairing} pairs ({summary['train_pairs']} train, "
        f"{summary['val_pairs']} validation) standing for {summary['hours']:.2f} h of pair audio "
        f"(≈{summary['size_gb_as_16bit']:.2f} GB as 16-bit), from {src['speech_used']} speech and "
        f"{src['noise_files']} noise files.",
        highlight=False,
    )
    console.print(f"Manifest {summary['manifest']} ({summary['manifest_bytes'] / 1e6:.2f} MB).", highlight=False)
    if sk["speech_too_short"] or sk["silent_noise_crops"] or sk["silent_speech_crops"] or summary["dropped_pairs"]:
        console.print(
            f"Skipped: {sk['speech_too_short']} speech files shorter than {seconds:g} s, "
            f"{sk['silent_speech_crops']} silent speech crops and {sk['silent_noise_crops']} silent noise "
            f"crops redrawn, {summary['dropped_pairs']} pairs dropped (details in pairs.json).",
            highlight=False,
        )
