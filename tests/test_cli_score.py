"""``jsqa score`` through Typer's runner: outputs, exit codes, resume, shards, one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from jsqa_cli.cli import app


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def folder(make_audio, tmp_path):
    make_audio("in/one.wav", seconds=1.0, seed=1)
    make_audio("in/two.flac", seconds=1.5, sr=44_100, channels=2, seed=2)
    make_audio("in/sub/three.wav", seconds=1.2, sr=8_000, seed=3)
    return tmp_path / "in"


def _score(runner, *args):
    return runner.invoke(app, ["score", *map(str, args)])


def test_score_folder_to_csv_exit_0_with_summary(runner, folder, tiny_model_dir, tmp_path):
    out = tmp_path / "scores.csv"
    r = _score(runner, folder, "-o", out, "-m", tiny_model_dir, "-j", "0")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    assert len(df) == 3 and df["mos"].between(1, 5).all() and df["error"].isna().all()
    assert "mean MOS" in r.stderr and "total audio" in r.stderr


def test_failed_file_gives_exit_1_and_an_error_row(runner, folder, tiny_model_dir, tmp_path):
    (folder / "bad.wav").write_bytes(b"")
    out = tmp_path / "scores.jsonl"
    r = _score(runner, folder, "-o", out, "-m", tiny_model_dir, "-q")
    assert r.exit_code == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    bad = [x for x in rows if x["error"]]
    assert len(rows) == 4 and len(bad) == 1 and bad[0]["error"] == "empty file (0 bytes)" and bad[0]["mos"] is None
    assert r.stderr == ""  # --quiet


def test_stdout_output_is_clean_csv(runner, folder, tiny_model_dir):
    r = _score(runner, folder / "one.wav", "-m", tiny_model_dir, "-q")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("path,mos,duration_s") and len(lines) == 2 and "one.wav" in lines[1]


def test_resume_appends_only_new_files(runner, folder, tiny_model_dir, tmp_path, make_audio):
    out = tmp_path / "scores.csv"
    assert _score(runner, folder, "-o", out, "-m", tiny_model_dir, "-q").exit_code == 0
    r = _score(runner, folder, "-o", out, "-m", tiny_model_dir)
    assert r.exit_code == 2 and "already exists; pass --resume" in r.stderr
    make_audio("in/four.wav", seconds=1.0, seed=4)
    r = _score(runner, folder, "-o", out, "-m", tiny_model_dir, "--resume")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    assert len(df) == 4 and df["path"].is_unique and df["path"].iloc[-1].endswith("four.wav")
    assert "skipped (resume)" in r.stderr


def test_segments_ext_filter_and_window_options(runner, folder, tiny_model_dir, tmp_path):
    out, seg = tmp_path / "s.csv", tmp_path / "seg.csv"
    r = _score(
        runner,
        folder,
        "-o",
        out,
        "-m",
        tiny_model_dir,
        "--ext",
        "wav",
        "--segments",
        seg,
        "--window",
        "0.5",
        "--hop",
        "0.25",
        "-q",
    )
    assert r.exit_code == 0, r.output
    df, segs = pd.read_csv(out), pd.read_csv(seg)
    assert sorted(df["path"].str.rsplit("/", n=1).str[-1]) == ["one.wav", "three.wav"]
    assert df["segments"].tolist() == segs.groupby("path").size().loc[df["path"]].tolist()
    assert (df["segments"] > 1).all()


def test_shards_then_merge(runner, folder, tiny_model_dir, tmp_path):
    out = tmp_path / "scores.csv"
    for k in range(2):
        r = _score(runner, folder, "-o", out, "-m", tiny_model_dir, "--shard", f"{k}/2", "-q")
        assert r.exit_code == 0, r.output
    parts = sorted(p.name for p in tmp_path.glob("scores.part-*"))
    assert parts == ["scores.part-00000-of-00002.csv", "scores.part-00001-of-00002.csv"]
    r = _score(runner, "--merge-parts", out)
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(out)) == 3 and "Merged 3 rows" in r.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["{folder}", "-o", "{tmp}/s.txt", "-m", "{model}"], "must end in .csv or .jsonl"),
        (["{tmp}/missing", "-m", "{model}"], "no such file or folder"),
        (["{folder}", "-m", "{tmp}/no-model"], "no such model folder"),
        (["{folder}", "-m", "{model}", "--shard", "2/2", "-o", "{tmp}/s.csv"], "expected K/N"),
        (["{folder}", "-m", "{model}", "--ext", "mp3"], "no audio files found"),
        (["{folder}", "-m", "{model}", "--device", "tpu"], "choose auto, cpu, cuda or cuda:N"),
        (["{folder}", "-m", "{model}", "--device", "gpu"], "--device 'gpu': choose auto, cpu, cuda or cuda:N"),
        (["{folder}", "-m", "{model}", "-j", "-1"], "--workers -1: give 0"),
        (["{folder}", "-m", "{model}", "--resume"], "--resume needs an output file"),
        (["--merge-parts", "{tmp}/s.csv"], "no part files"),
    ],
)
def test_usage_errors_exit_2_with_one_line(runner, folder, tiny_model_dir, tmp_path, args, message):
    r = _score(runner, *[a.format(folder=folder, tmp=tmp_path, model=tiny_model_dir) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.stderr and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.output


def test_an_output_the_system_refuses_is_one_line_naming_it(runner, folder, tiny_model_dir, tmp_path, monkeypatch):
    import errno
    import os

    import jsqa_cli.writers

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(jsqa_cli.writers, "open", refuse, raising=False)
    r = _score(runner, folder, "-m", tiny_model_dir, "-o", tmp_path / "s.csv")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip() == f"Error: {tmp_path / 's.csv'}: permission denied"


def test_cuda_without_a_gpu_is_a_usage_error(runner, folder, tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = _score(runner, folder, "-m", tiny_model_dir, "--device", "cuda")
    assert r.exit_code == 2 and "no CUDA GPU is available" in r.stderr and "Traceback" not in r.output


def test_without_a_model_the_missing_default_fails_cleanly(runner, folder, monkeypatch):
    from jsqa_cli.model import DEFAULT_MODEL, bundled_models

    if DEFAULT_MODEL in bundled_models():
        pytest.skip("the bundled default model is installed")
    monkeypatch.delenv("JSQA_MODEL", raising=False)
    r = _score(runner, folder)
    assert r.exit_code == 2 and DEFAULT_MODEL in r.stderr and "Traceback" not in r.output


@pytest.mark.slow
def test_torchrun_two_processes_write_parts_and_rank0_merges(folder, tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "scores.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "jsqa_cli",
            "score",
            str(folder),
            "-o",
            str(out),
            "-m",
            str(tiny_model_dir),
            "-q",
            "--device",
            "cpu",
            "-j",
            "0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("scores.part-*")) == [
        "scores.part-00000-of-00002.csv",
        "scores.part-00001-of-00002.csv",
    ]
    df = pd.read_csv(out)
    assert len(df) == 3 and df["path"].is_monotonic_increasing and df["mos"].between(1, 5).all()


def test_paths_with_brackets_are_printed_intact(runner, make_audio, tiny_model_dir, tmp_path):
    # rich would swallow "[x]" as markup: error lines and the merge line print it as it is
    r = _score(runner, tmp_path / "take[x]" / "missing[bold].wav", "-m", tiny_model_dir)
    assert r.exit_code == 2 and f"{tmp_path}/take[x]/missing[bold].wav: no such file or folder" in r.stderr
    folder = tmp_path / "in[x]"
    make_audio("in[x]/a.wav", seconds=1.0)
    out = tmp_path / "s[red].csv"
    for k in range(2):
        assert _score(runner, folder, "-o", out, "-m", tiny_model_dir, "--shard", f"{k}/2", "-q").exit_code == 0
    r = _score(runner, "--merge-parts", out)
    assert r.exit_code == 0 and f"Merged 1 rows into {out}" in r.stderr


def test_short_truncated_and_resume_by_resolved_path(runner, make_audio, tiny_model_dir, tmp_path, monkeypatch):
    from conftest import synth_speech

    make_audio("d/ok.wav", seconds=1.5)
    make_audio("d/tiny.wav", seconds=0.5)
    whole = (tmp_path / "d" / "ok.wav").read_bytes()
    (tmp_path / "d" / "cut.wav").write_bytes(whole[: 44 + 2 * 20_000])  # 1.25 s of the header's 1.5 s
    out = tmp_path / "s.csv"
    monkeypatch.chdir(tmp_path)
    r = _score(runner, "d", "-o", out, "-m", tiny_model_dir, "-q", "-j", "0")
    assert r.exit_code == 1, r.output
    df = pd.read_csv(out).set_index("path")
    assert df.loc["d/tiny.wav", "error"] == "too short to score (0.50 s < 1 s)"
    assert df.loc["d/cut.wav", "warnings"].startswith("truncated (the file holds 1.25 s; its header promises 1.50 s)")
    assert 1 <= df.loc["d/cut.wav", "mos"] <= 5 and df.loc["d/cut.wav", "duration_s"] == 1.25
    # resumed with the absolute spelling of the folder, and through a symlink: nothing is scored twice
    (tmp_path / "link").symlink_to(tmp_path / "d")
    import soundfile as sf

    sf.write(str(tmp_path / "d" / "new.wav"), synth_speech(1.2, seed=9), 16_000)
    r = _score(runner, tmp_path / "d", tmp_path / "link", "-o", out, "-m", tiny_model_dir, "-q", "--resume")
    assert r.exit_code == 0, r.output
    paths = pd.read_csv(out)["path"].tolist()
    assert len(paths) == 4 and sorted(paths[:3]) == ["d/cut.wav", "d/ok.wav", "d/tiny.wav"]
    assert paths[3] == str(tmp_path / "d" / "new.wav")  # the user's spelling is kept
