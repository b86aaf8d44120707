"""The ``jsqa`` command line: a thin Typer app. Each command group lives in ``jsqa_cli/commands/<group>.py`` and
exposes ``register(app)``; this file only assembles them. Logic lives in the library modules, where tests
call it directly."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer

from jsqa_cli import __version__, commands

# The order commands appear in `jsqa --help`; command modules not listed here come after, alphabetically.
ORDER = ["score", "pairs", "pretrain", "finetune", "evaluate", "hub", "models"]

app = typer.Typer(
    name="jsqa",
    help="Speech quality (MOS 1-5) scoring, and training of JSQA scorers.\n\n"
    "Example: jsqa score recordings/ -o scores.csv",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"jsqa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """jsqa: speech quality (MOS) estimates for folders of recordings."""


def _command_modules() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


for _name in _command_modules():
    importlib.import_module(f"jsqa_cli.commands.{_name}").register(app)


def main() -> None:
    """Run the app, then end the process. Once a command that imported torch is done (its rows written, its
    files closed, its worker processes joined), Python's own teardown of torch's modules still takes about 0.8 s
    on 2 cores and serves nothing, so the process ends with ``os._exit`` after flushing its output. Commands that
    never import torch (``--help``, ``--version``) exit as usual."""
    try:
        app()
        code = 0
    except SystemExit as e:
        code = e.code
    if "torch" not in sys.modules:
        sys.exit(code)
    if isinstance(code, str):  # sys.exit("message") prints the message and exits 1
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to deliver
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    main()
