"""The ``jsqa`` app: version, help, and an example in every command's help."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from jsqa_cli import __version__
from jsqa_cli.cli import app


def _commands(group: typer.Typer, prefix=()):
    """(path of names) for every command, including those inside sub-groups."""
    for cmd in group.registered_commands:
        yield (*prefix, cmd.name or cmd.callback.__name__.replace("_", "-"))
    for sub in group.registered_groups:
        name = sub.name or sub.typer_instance.info.name
        yield (*prefix, name)
        yield from _commands(sub.typer_instance, (*prefix, name))


def test_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"jsqa {__version__}"


def test_root_help_lists_score_with_an_example():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0 and "score" in r.stdout and "Example" in r.stdout


def test_every_command_help_has_an_example():
    commands = list(_commands(app))
    assert ("score",) in commands
    runner = CliRunner()
    for path in commands:
        r = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert r.exit_code == 0, (path, r.output)
        assert "example" in r.stdout.lower(), f"jsqa {' '.join(path)} --help has no example"
