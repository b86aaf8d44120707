"""Which model is used and how it is named: $JSQA_MODEL, `load_model` names, `jsqa info` and `jsqa models`."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from jsqa_cli.cli import app
from jsqa_cli.model import DEFAULT_MODEL, build_model, bundled_models, load_model, save_model

runner = CliRunner()
RECIPE = {"config": "small", "config_sha256": "ab" * 32, "git_commit": "0123456789abcdef0123456789abcdef01234567"}


@pytest.fixture
def recipe_model(tmp_path):
    torch.manual_seed(1)
    return save_model(build_model("tiny"), tmp_path / "recipe-model", metadata={"stage": "finetune", "recipe": RECIPE})


def _jsqa(*args, env=None):
    """`python -m jsqa_cli ARGS` in a fresh interpreter, as a user runs it."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "jsqa_cli", *args], capture_output=True, text=True, env=full_env)


def test_load_model_names_what_it_loaded(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("JSQA_MODEL", str(tiny_model_dir))
    assert load_model().name == str(tiny_model_dir)  # the default came from $JSQA_MODEL: named after it
    assert load_model(tiny_model_dir).name == str(tiny_model_dir)  # a folder: as given
    if DEFAULT_MODEL in bundled_models():
        assert load_model(DEFAULT_MODEL).name == DEFAULT_MODEL
        monkeypatch.setenv("JSQA_MODEL", "")  # set but empty: the bundled default
        assert load_model().name == DEFAULT_MODEL


def test_jsqa_model_names_score_rows_and_info(tiny_model_dir, make_audio):
    """With $JSQA_MODEL set, `jsqa score` rows and `jsqa info` name the same model: the one that scored."""
    wav = make_audio("a.wav", seconds=1.0)
    env = {"JSQA_MODEL": str(tiny_model_dir)}
    scored = _jsqa("score", str(wav), "-q", "-j", "0", "--device", "cpu", env=env)
    assert scored.returncode == 0, scored.stderr
    rows = list(csv.DictReader(io.StringIO(scored.stdout)))
    assert [r["model"] for r in rows] == [str(tiny_model_dir)]
    info = _jsqa("info", "--json", env=env)
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    assert (doc["name"], doc["source"], doc["path"]) == (str(tiny_model_dir), "folder", str(tiny_model_dir))
    assert doc["config"]["preset"] == "tiny"


def test_models_names_the_default(tiny_model_dir):
    result = runner.invoke(app, ["models"], env={"JSQA_MODEL": str(tiny_model_dir), "COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert f"Without --model: {tiny_model_dir} ($JSQA_MODEL)" in result.stdout
    result = runner.invoke(app, ["models"], env={"JSQA_MODEL": "", "COLUMNS": "300"})
    assert f"Without --model: {DEFAULT_MODEL}\n" in result.stdout


def test_info_shows_recipe_provenance(recipe_model):
    result = runner.invoke(app, ["info", str(recipe_model)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for label, value in (
        ("recipe config", "small"),
        ("recipe config sha256", RECIPE["config_sha256"]),
        ("recipe git commit", RECIPE["git_commit"]),
    ):
        assert any(label in line and value in line for line in lines), (label, result.stdout)
    assert '{"config"' not in result.stdout  # shown as rows, not as a JSON blob
    doc = json.loads(runner.invoke(app, ["info", str(recipe_model), "--json"]).stdout)
    assert doc["metadata"]["recipe"] == RECIPE


def test_info_without_recipe_has_no_provenance_rows(tiny_model_dir):
    result = runner.invoke(app, ["info", str(tiny_model_dir)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "recipe" not in result.stdout and "stage" in result.stdout


def test_info_unknown_model_is_one_line(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "nowhere: no such model folder" in result.stderr
    assert "Traceback" not in result.output and result.stderr.strip().count("\n") == 0


def test_info_shows_the_recipe_that_made_the_bundled_model():
    """The bundled model came out of training/recipe.py: info names the config, its sha256 and the git commit."""
    result = runner.invoke(app, ["info", "jsqa-small"], env={"JSQA_MODEL": "", "COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 2 and cells[0].startswith("recipe"):
            rows[cells[0]] = cells[1]
    configs = Path(__file__).resolve().parents[1] / "training" / "configs"
    assert (configs / f"{rows.get('recipe config')}.toml").is_file(), result.stdout
    assert re.fullmatch(r"[0-9a-f]{64}", rows["recipe config sha256"]), rows
    assert re.fullmatch(r"[0-9a-f]{40}", rows["recipe git commit"]), rows
