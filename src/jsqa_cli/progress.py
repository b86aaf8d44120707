"""The one progress bar of the long-running commands (score, pretrain, finetune, make-pairs): a description, the bar,
done/total, a live status text (loss, validation), elapsed and remaining time. Off when not on the main process
or with ``--quiet``."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(enabled: bool = True, *, console: Console | None = None, transient: bool = False) -> Progress:
    """``with progress_bar() as bar: task = bar.add_task("pretrain", total=N, status="")``, then
    ``bar.update(task, completed=k, status="loss 0.31")``."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=transient,
    )
