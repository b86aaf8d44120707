"""``jsqa models`` and ``jsqa info``: what models are available here, and what one of them is."""

from __future__ import annotations

import json
import os
from typing import Optional

import typer

from jsqa_cli.commands._common import console, one_line_errors

# Help texts: one source line per paragraph would pass 120 columns, so paragraphs are built from adjacent strings
# (a newline inside one would show as a line break). Square brackets are escaped: rich would take them for markup.
MODELS_HELP = (
    "List the bundled models and the jsqa models in the local Hugging Face cache.\n\n"
    "Columns: the name to pass to --model, where it comes from, revision, parameters, metrics. The last line names "
    "the model used without --model ($JSQA_MODEL, else the bundled default).\n\n"
    "Example: jsqa models --json\n"
)

INFO_HELP = (
    "Show a model's scores (mos, and P.835 sig and bak when it has those heads), config, parameter count, metrics "
    "and provenance (for a model the training recipe made: its config, the config's sha256 and the git commit).\n\n"
    "MODEL is a bundled name, a model folder or a Hub id ORG/NAME\\[@REVISION] (pulled into the cache if needed). "
    "Without MODEL: the model `jsqa score` uses, $JSQA_MODEL or else the bundled default.\n\n"
    "Example: jsqa info me/jsqa-nisqa@v1.0\n"
)


def _scores(config: dict) -> tuple[list[str], list[str]]:
    """(the scores `jsqa score` reports: mos, then sig/bak where the model has them; its other heads, training
    aids that scoring leaves out)."""
    from jsqa_cli.model import P835_HEADS

    extra = list(config.get("extra_heads") or [])
    return ["mos", *(h for h in P835_HEADS if h in extra)], [h for h in extra if h not in P835_HEADS]


def _as_json(entry) -> dict:
    scores, other = _scores(entry.config)
    return {
        "name": entry.name,
        "source": entry.source,
        "path": str(entry.path),
        "revision": entry.revision,
        "commit": entry.commit,
        "refs": entry.refs,
        "parameters": entry.parameters,
        "scores": scores,
        "other_heads": other,
        "preset": entry.preset,
        "metrics": entry.metrics,
        "config": entry.config,
        "metadata": entry.metadata,
    }


def register(app: typer.Typer) -> None:
    @app.command("models", help=MODELS_HELP)
    @one_line_errors
    def models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
        from rich.table import Table

        from jsqa_cli import hub

        entries = hub.list_models()
        if as_json:
            console.print_json(json.dumps([_as_json(e) for e in entries], default=str))
            return
        table = Table(title="jsqa models", title_justify="left")
        for col in ("name", "source", "revision", "parameters", "metrics"):
            table.add_column(col, overflow="fold")
        for e in entries:
            table.add_row(
                e.name,
                e.source,
                e.revision if e.source == "cache" else "-",
                f"{e.parameters:,}" if e.parameters is not None else "?",
                hub.metrics_summary(e.metrics),
            )
        console.print(table)
        if not any(e.source == "cache" for e in entries):
            console.print(
                "No jsqa models in the Hugging Face cache yet (get one with `jsqa pull ORG/NAME`).", highlight=False
            )
        default = hub.default_model_name()
        console.print(
            f"Without --model: {default}" + (" ($JSQA_MODEL)" if os.environ.get("JSQA_MODEL") else ""),
            highlight=False,
            markup=False,
        )

    @app.command("info", help=INFO_HELP)
    @one_line_errors
    def info(
        model: Optional[str] = typer.Argument(
            None, help="Model (default: $JSQA_MODEL or the bundled default).", show_default=False
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    ) -> None:
        from rich.table import Table

        from jsqa_cli import hub

        e = hub.model_info(model)
        if as_json:
            console.print_json(json.dumps(_as_json(e), default=str))
            return
        head = Table(show_header=False, title=e.name, title_justify="left")
        head.add_column(style="bold")
        head.add_column(overflow="fold")
        head.add_row("source", e.source)
        head.add_row("path", str(e.path))
        if e.source == "cache":
            head.add_row("revision", e.revision)
            head.add_row("commit", e.commit)
        head.add_row("parameters", f"{e.parameters:,}" if e.parameters is not None else "?")
        scores, other = _scores(e.config)
        head.add_row(
            "scores", ", ".join(scores) + (f" (training heads, not reported: {', '.join(other)})" if other else "")
        )
        head.add_row("config", ", ".join(f"{k}={v}" for k, v in e.config.items()))
        for label, value in hub.recipe_provenance(e.metadata).items():
            head.add_row(label, value)
        for k, v in e.metadata.items():
            if k not in ("metrics", "recipe"):
                head.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
        console.print(head)
        if e.metrics:
            table = Table(title="metrics", title_justify="left")
            for col in ("data", "level", "n", "PCC", "SRCC", "RMSE", "MAE"):
                table.add_column(col)
            for r in e.metrics:
                table.add_row(
                    r["dataset"],
                    r["level"],
                    str(r["n"]) if r.get("n") is not None else "-",
                    *[f"{r[m]:.3f}" if m in r else "-" for m in hub.METRIC_NAMES],
                )
            console.print(table)
        else:
            console.print("metrics: none recorded (run `jsqa evaluate`)", highlight=False)
