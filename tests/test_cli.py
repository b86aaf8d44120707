"""The ``jsqa`` app: version, help, and an example in every command's help."""

from __future__ import annotations

import pytest
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


def test_automatic_workers_leave_cores_to_a_model_on_the_cpu(monkeypatch):
    import os

    from jsqa_cli.distributed import default_workers

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert (default_workers(), default_workers("cuda"), default_workers("cuda:1"), default_workers("cpu")) == (
        7,
        7,
        7,
        3,
    )
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert (default_workers(), default_workers("cpu")) == (1, 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert default_workers() == 8  # at most 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: the cores are shared among the local processes
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert (default_workers("cuda"), default_workers("cpu")) == (3, 1)


@pytest.mark.parametrize(("command", "text"), [("score", "ORG/NAME[@REV]"), ("info", "ORG/NAME[@REVISION]")])
def test_help_keeps_literal_brackets(command, text):
    """rich reads `[...]` as markup: help texts escape it, so the Hub id's optional revision stays visible."""
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0 and text in result.stdout, result.stdout
