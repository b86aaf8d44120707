"""``jsqa score``: MOS for audio files and folders, into CSV / JSONL / stdout. Logic lives in jsqa_cli.scoring."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from jsqa_cli.commands._common import (
    DEVICE_HELP,
    EXIT_OK,
    EXIT_PARTIAL,
    WORKERS_HELP,
    check_device,
    err_console,
    fail,
    one_line_errors,
    resolve_workers,
)

HELP = """Score speech quality (MOS 1-5) of audio files and folders (searched recursively).

One row per file (path, mos, duration_s, sample_rate, channels, segments, model, warnings, error) to -o FILE.csv.

A model with P.835 heads adds sig (speech signal) and bak (background), 1-5, after mos.

-o FILE.jsonl writes JSON lines, -o - CSV on stdout. Rows are flushed as they finish; --resume goes on after a stop.

Exit status: 0 all files scored, 1 some files failed (their rows carry the error), 2 usage or setup error.

Examples:

  jsqa score recordings/ -o scores.csv --model models/my-jsqa

  jsqa score a.wav b.flac                      # CSV on stdout

  jsqa score corpus/ -o scores.csv --resume    # continue an interrupted run

  torchrun --nproc-per-node 4 -m jsqa_cli score corpus/ -o scores.csv   # 4 shards, merged into scores.csv

  jsqa score corpus/ -o scores.csv --shard 0/2 # on machine 1 (and --shard 1/2 on machine 2), then:
  jsqa score --merge-parts scores.csv
"""


def _extensions(ext: list[str] | None) -> tuple[str, ...] | None:
    if not ext:
        return None
    out = [e.strip().lower() for item in ext for e in item.split(",") if e.strip()]
    return tuple(e if e.startswith(".") else f".{e}" for e in out)


def _summary_table(summary: dict, run=None):
    from rich.table import Table

    table = Table(title="jsqa score", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("files", f"{summary['files']}")
    table.add_row("failed", f"[red]{summary['failed']}[/]" if summary["failed"] else "0")

    def fmt(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.3f}"

    table.add_row("mean MOS", fmt(summary["mean_mos"]))
    table.add_row("median MOS", fmt(summary["median_mos"]))
    for key in summary:  # P.835 sig and bak, when the model gives them
        if key.startswith("mean_") and key != "mean_mos":
            table.add_row(f"mean {key[5:].upper()}", fmt(summary[key]))
    table.add_row("total audio", f"{summary['audio_h']:.3f} h")
    if run is not None:
        if run.skipped:
            table.add_row("skipped (resume)", f"{run.skipped}")
        table.add_row(
            "this run",
            f"{run.scored} files in {run.wall_s:.1f} s" + (f", {run.realtime:.0f}× real time" if run.audio_s else ""),
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command("score", help=HELP, no_args_is_help=True)
    @one_line_errors
    def score(
        paths: Optional[list[Path]] = typer.Argument(None, help="Audio files and/or folders.", show_default=False),
        output: str = typer.Option("-", "--output", "-o", help="scores.csv, scores.jsonl, or - for CSV on stdout."),
        model: Optional[str] = typer.Option(
            None,
            "--model",
            "-m",
            help="Model folder, bundled name or Hub id (ORG/NAME\\[@REV]). "
            "Default: $JSQA_MODEL or the bundled jsqa-small.",
        ),
        segments: Optional[Path] = typer.Option(
            None,
            "--segments",
            help="Also write window scores (path, start_s, end_s, mos[, sig, bak]) here (.csv or .jsonl).",
        ),
        ext: Optional[list[str]] = typer.Option(
            None, "--ext", help="Extensions to take from folders, e.g. --ext wav,flac (default: all audio extensions)."
        ),
        batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Windows per model call."),
        workers: Optional[int] = typer.Option(None, "--workers", "-j", help=WORKERS_HELP, show_default=False),
        device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
        channel: Optional[int] = typer.Option(
            None, "--channel", min=0, help="Score this channel (0-based) instead of the mean of all."
        ),
        window_s: float = typer.Option(8.0, "--window", min=0.1, help="Window length for long files, seconds."),
        hop_s: float = typer.Option(4.0, "--hop", min=0.1, help="Window hop, seconds."),
        resume: bool = typer.Option(False, "--resume", help="Skip files already in the output and append."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
        shard: Optional[str] = typer.Option(
            None,
            "--shard",
            help="Score only shard K of N (0-based, e.g. 0/4) into "
            "OUTPUT.part-0000K-of-0000N; automatic under torchrun.",
        ),
        merge_parts: Optional[Path] = typer.Option(
            None, "--merge-parts", help="Merge OUTPUT's part files into OUTPUT and exit."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    ) -> None:
        device = check_device(device)  # before importing torch: a bad option is refused at once
        workers = resolve_workers(workers, device)
        from jsqa_cli import scoring

        if merge_parts is not None:
            df = scoring.merge_parts(merge_parts)
            if segments is not None:
                scoring.merge_parts(segments)
            if not quiet:
                err_console.print(f"Merged {len(df)} rows into {escape(str(merge_parts))}", highlight=False)
                err_console.print(_summary_table(scoring.summarize(df)))
            raise typer.Exit(EXIT_PARTIAL if scoring.summarize(df)["failed"] else EXIT_OK)
        if not paths:
            fail("no PATH given: name audio files or folders (or use --merge-parts OUTPUT)")
        if window_s < hop_s:
            fail(f"--hop {hop_s} is longer than --window {window_s}: windows would skip audio")
        if resume and overwrite:
            fail("--resume and --overwrite contradict each other; pick one")

        dist = None
        shard_kk = scoring.parse_shard(shard) if shard else None
        if shard_kk is None and scoring.torchrun_shard() is not None:
            from jsqa_cli.distributed import setup_distributed

            dist = setup_distributed(device)
            shard_kk, device = (dist.rank, dist.world_size), dist.device
            quiet = quiet or not dist.is_main
        from jsqa_cli.writers import check_output

        target = scoring.part_path(output, *shard_kk) if shard_kk and output != "-" else output
        check_output(target, resume=resume, overwrite=overwrite)  # before loading the model or searching folders
        kwargs = {"extensions": _extensions(ext)} if ext else {}
        files = scoring.find_audio(paths, **kwargs)
        if not files:
            fail(
                f"no audio files found in {', '.join(map(str, paths))}"
                + (f" with extension {', '.join(kwargs['extensions'])}" if kwargs else "")
            )
        net, dev = scoring.prepare_model(model, device)

        run = scoring.score_to_file(
            files,
            output,
            net,
            segments_path=segments,
            resume=resume,
            overwrite=overwrite,
            shard=shard_kk,
            batch_size=batch_size,
            workers=workers,
            device=dev,
            channel=channel,
            window_s=window_s,
            hop_s=hop_s,
            progress=not quiet,
        )
        merged_path = None
        if dist is not None:
            import torch.distributed as tdist

            from jsqa_cli.distributed import cleanup_distributed

            if tdist.is_initialized():
                tdist.barrier()  # every part is complete before rank 0 merges them
            if dist.is_main:
                scoring.merge_parts(output)
                if segments is not None:
                    scoring.merge_parts(segments)
                merged_path = output
            cleanup_distributed()

        if quiet and not merged_path:  # no table to print: the exit status needs only this run's failures
            raise typer.Exit(EXIT_PARTIAL if run.failed else EXIT_OK)
        if merged_path or (resume and run.output != "-"):  # the whole file, with the rows from before --resume
            summary = scoring.summarize(scoring.read_scores(merged_path or run.output))
        else:  # this run wrote every row: its own tally, without reading the file back (or importing pandas)
            summary = run.summary()
        if not quiet:
            err_console.print(_summary_table(summary, run))
            if merged_path:
                err_console.print(f"Merged {dist.world_size} parts into {escape(str(merged_path))}", highlight=False)
        raise typer.Exit(EXIT_PARTIAL if run.failed or (merged_path and summary["failed"]) else EXIT_OK)
