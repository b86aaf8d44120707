"""``jsqa evaluate``: predicted vs. subjective MOS for one or more models (logic in :mod:`jsqa_cli.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from jsqa_cli.commands._common import (
    DEVICE_HELP,
    EXIT_PARTIAL,
    WORKERS_HELP,
    check_device,
    console,
    err_console,
    fail,
    one_line_errors,
    resolve_workers,
)


def register(app: typer.Typer) -> None:
    app.command("evaluate", no_args_is_help=True)(evaluate_command)


@one_line_errors
def evaluate_command(
    model: Optional[List[str]] = typer.Option(
        None,
        "--model",
        "-m",
        help="Model to evaluate: bundled name, folder or "
        "Hub id. Repeat to compare; relative changes are against the first. "
        "Default: $JSQA_MODEL or the bundled jsqa-small, as for score.",
    ),
    nisqa_root: Optional[Path] = typer.Option(None, "--nisqa-root", help="NISQA_Corpus folder."),
    db: Optional[List[str]] = typer.Option(
        None,
        "--db",
        help="NISQA database(s) to evaluate on (repeat). Default: "
        "NISQA_TEST_FOR, NISQA_TEST_P501, NISQA_TEST_LIVETALK.",
    ),
    csv: Optional[List[Path]] = typer.Option(
        None,
        "--csv",
        help="Labelled CSV instead of NISQA: columns path (or "
        "file) and mos, optional condition, optional P.835 sig and bak; relative paths from the CSV's "
        "folder. Repeat for several test sets: metrics per CSV and for all.",
    ),
    output: Path = typer.Option(
        Path("eval"), "--output", "-o", help="Folder for predictions.csv, metrics.json and scatter.png."
    ),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Windows per batch."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help=WORKERS_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write scatter.png (needs matplotlib: jsqa\\[plot])."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table; files only."),
) -> None:
    """Measure models against subjective MOS: RMSE, MAE, PCC, SRCC per file and per condition.

    Files are scored exactly as `jsqa score` scores them (same windows, same numbers).

    P.835 sig and bak labels are measured too, one block per scale, for models with those heads.

    Example: jsqa evaluate -m models/scratch -m models/jsqa --nisqa-root NISQA_Corpus --db NISQA_TEST_FOR -o eval/

    Any labelled CSV: jsqa evaluate --model jsqa-small --csv labels.csv -o eval/
    """
    device = check_device(device)
    workers = resolve_workers(workers, device)
    from jsqa_cli.evaluate import evaluate, load_eval_data, rich_table
    from jsqa_cli.model import default_model_name

    data, condition_mos, info = load_eval_data(nisqa_root=nisqa_root, dbs=db or (), csv=csv)
    models = model or [default_model_name()]
    result = evaluate(
        models,
        data,
        output,
        condition_mos=condition_mos,
        batch_size=batch_size,
        workers=workers,
        device=device,
        plot=plot,
        progress=not quiet,
        data_info=info,
    )
    if not quiet:
        console.print(rich_table(result.metrics, title=f"{len(data)} labelled files"))
        for name, path in result.files.items():
            console.print(f"{name}: {path}", highlight=False)
    for note in result.notes:
        err_console.print(f"Note: {escape(note)}", highlight=False)  # hints such as jsqa[plot] print as they are
    valid = result.predictions["mos_pred"].notna().sum()
    if valid == 0:
        fail("no file could be scored; see the error column of predictions.csv")
    if result.failed:
        raise typer.Exit(EXIT_PARTIAL)
