"""training/recipe.py: the smoke config end to end on the shared data (its model scores examples/, a second run
skips every stage), and the plan's hashes, check verdicts and one-line errors without running anything."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import recipe  # noqa: E402

SMOKE = REPO / "training" / "configs" / "smoke.toml"
CONFIGS = sorted((REPO / "training" / "configs").glob("*.toml"))
DATA = REPO / ".." / "shared" / "data"


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _config(path: Path = SMOKE) -> dict:
    return recipe.tomllib.loads(path.read_text())


def _recipe(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "training" / "recipe.py"), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "speech").is_dir(), reason="needs the shared data folder (../shared/data)")
def test_smoke_recipe_runs_end_to_end_scores_examples_and_resumes(tmp_path):
    from jsqa_cli.scoring import score_files

    out = tmp_path / "smoke"
    config_path, teachers = SMOKE, _have("speechmos") and _have("onnxruntime")
    if not teachers:  # without the teachers extra: the same pipeline without P.835 labels and heads
        config_path = tmp_path / "smoke.toml"
        text = SMOKE.read_text().replace('heads = ["sig", "bak"]', "")
        config_path.write_text(text[: text.index("[labels]")] + text[text.index("[pairs]") :])
    first = _recipe("--config", str(config_path), "--out", str(out))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    units = [u.name for u in recipe.plan(_config(config_path), out.resolve(), config_path)]
    assert ({"labels/main"} if teachers else set()) <= set(units)
    assert {
        "sources",
        "corpus/main",
        "pairs",
        "pretrain",
        "finetune/ranking",
        "evaluate",
        "checks",
        "bundle",
        "ablation/report",
    } <= set(units)
    assert all(f"[recipe] {u}: done in" in first.stdout for u in units)

    model = out / "model"
    assert {"config.json", "model.safetensors", "README.md", "metrics.json"} <= {p.name for p in model.iterdir()}
    config = json.loads((model / "config.json").read_text())
    assert config["flatness_bands"] == 16  # the architecture of [pretrain.model] reached the shipped network
    meta = config["metadata"]
    assert set(meta["recipe"]) == {"config", "config_sha256", "git_commit"}
    assert meta["recipe"]["config"] == "smoke"
    assert meta["recipe"]["config_sha256"] == recipe.sha256_hex(config_path.read_bytes())
    examples = sorted(p for p in (REPO / "examples").iterdir() if p.suffix in (".wav", ".flac", ".ogg", ".mp3"))
    scores = score_files(examples, str(model))
    reported = ["mos", "sig", "bak"] if teachers else ["mos"]
    assert (
        config["extra_heads"] == reported[1:] and [c for c in scores.columns if c in ("mos", "sig", "bak")] == reported
    )
    assert len(scores) == len(examples) and scores[reported].stack().between(1, 5).all()
    if teachers:
        labelled = pd.read_csv(out / "labels" / "main" / "train.csv")
        assert {"sig", "bak", "sig_sim", "bak_sim", "aux_dnsmos_ovrl"} <= set(labelled.columns)
        assert labelled[["sig", "bak"]].stack().between(1, 5).all()
    timings = (out / "timings.tsv").read_text().splitlines()
    assert [line.split("\t")[1] for line in timings] == units
    assert (out / "ablation" / "report" / "ablation.md").read_text().count("| `") == 2  # the two modes

    second = _recipe("--config", str(config_path), "--out", str(out))
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("skipped (done for this config)") == len(units)
    assert "running" not in second.stdout

    # the same model, every check required: the toy model fails the bar, and the recipe says which check
    strict = tmp_path / "strict.toml"
    strict.write_text(
        config_path.read_text().replace('advisory = ["ladders", "noizeus", "clean_speech"]', "advisory = []")
    )
    third = _recipe("--config", str(strict), "--out", str(out), "--stages", "checks")
    assert third.returncode == 1
    assert third.stderr.startswith("recipe: quality check failed: ") and third.stderr.count("\n") == 1
    assert "Traceback" not in third.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_plans(path, tmp_path):
    """Each config parses, names only corpus draws it has, and every unit hash is distinct."""
    units = recipe.plan(_config(path), tmp_path, path)
    assert len({u.hash for u in units}) == len(units)
    made = {"pairs", "pretrain"} if "pretrain" in _config(path) else set()  # small-continue starts from a release
    assert {"sources", "corpus/main", "evaluate", "checks", "bundle", *made} <= {u.name for u in units}


def test_a_changed_number_reruns_that_stage_and_what_depends_on_it(tmp_path, monkeypatch):
    config = _config()
    before = {u.name: u.hash for u in recipe.plan(config, tmp_path, SMOKE)}
    changed = copy.deepcopy(config)
    changed["pretrain"]["steps"] += 1
    after = {u.name: u.hash for u in recipe.plan(changed, tmp_path, SMOKE)}
    rerun = {name for name in before if before[name] != after[name]}
    assert {"pretrain", "finetune/regression", "finetune/ranking", "evaluate", "checks", "bundle"} <= rerun
    assert not rerun & {"sources", "corpus/main", "corpus/groups", "pairs", "ablation/pt-cross-jnd-proj"}
    monkeypatch.setattr(recipe, "git_commit", lambda: "another commit")  # a new commit alone redoes nothing
    again = {u.name: u.hash for u in recipe.plan(copy.deepcopy(config), tmp_path, SMOKE)}
    assert again == before


def test_a_killed_run_resumes_from_its_checkpoint_only_with_the_same_hash(tmp_path):
    units = {u.name: u for u in recipe.plan(_config(), tmp_path, SMOKE)}
    phase, draw = units["finetune/regression"], units["corpus/main"]
    assert phase.checkpoint and draw.checkpoint == "journal.jsonl"  # simulate_mos.py --resume reads it
    draw.folder.mkdir(parents=True)
    (draw.folder / recipe.STARTED).write_text(json.dumps({"hash": draw.hash}))
    assert not draw.resumable()  # killed before its first batch: it starts again
    (draw.folder / draw.checkpoint).write_text("{}")
    assert draw.resumable()
    (phase.folder / "training").mkdir(parents=True)
    (phase.folder / recipe.STARTED).write_text(json.dumps({"hash": phase.hash}))
    assert not phase.resumable()  # no checkpoint yet
    (phase.folder / phase.checkpoint).write_bytes(b"x")
    assert phase.resumable() and not phase.done()
    (phase.folder / recipe.STARTED).write_text(json.dumps({"hash": "another config"}))
    assert not phase.resumable()


def test_failed_checks_and_advisory_groups():
    report = {
        "ladders": [{"ladder": "opus", "passed": False}, {"ladder": "mp3", "passed": True}],
        "noizeus": {"passed": False},
        "clean_by_source": [{"source": "librispeech", "passed": False}, {"source": "synthetic", "passed": None}],
    }
    failed = recipe.failed_checks(report)
    assert failed == ["ladders/opus", "noizeus", "clean_speech/librispeech"]
    assert [c for c in failed if not recipe.is_advisory(c, ["ladders", "clean_speech"])] == ["noizeus"]
    assert [c for c in failed if not recipe.is_advisory(c, ["ladders/opus"])] == failed[1:]
    assert not recipe.is_advisory("ladders_x/opus", ["ladders"])
    assert recipe.failed_checks({"ladders": [], "noizeus": None, "clean_by_source": []}) == []


def test_tables_become_script_options():
    argv = recipe.as_argv(
        {
            "num_files": [3, 1, 1],
            "seed": 2,
            "ladder": False,
            "reference_labels": True,
            "family_weights": {"codec": 1, "noise": 0},
        },
        positional=("m",),
    )
    assert argv == [
        "m",
        "--num-files",
        "3",
        "1",
        "1",
        "--seed",
        "2",
        "--reference-labels",
        "--family-weights",
        "codec=1,noise=0",
    ]


def test_usage_mistakes_are_one_line_with_exit_2(tmp_path):
    bad_stage = _recipe("--config", str(SMOKE), "--out", str(tmp_path), "--stages", "sources,polish")
    assert bad_stage.returncode == 2 and "unknown stage(s) polish" in bad_stage.stderr
    missing = _recipe("--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path))
    assert missing.returncode == 2 and missing.stderr == f"recipe: {tmp_path / 'nope.toml'}: no such config file\n"
    typo = tmp_path / "typo.toml"
    typo.write_text(SMOKE.read_text().replace('train = ["main", "groups"]', 'train = ["main", "grups"]'))
    named = _recipe("--config", str(typo), "--out", str(tmp_path / "o"))
    assert named.returncode == 2 and "grups" in named.stderr and named.stderr.count("\n") == 1
    order = _recipe("--config", str(SMOKE), "--out", str(tmp_path / "fresh"), "--stages", "pretrain")
    assert order.returncode == 2 and order.stderr == (
        "recipe: pretrain needs pairs done for this config: run that stage first\n"
    )
