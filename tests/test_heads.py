"""P.835 heads in every user-facing path: `jsqa score` (rows, segments, summary, resume, shards), the Python API,
`jsqa evaluate` (one block of metrics per scale) and `jsqa info`. A model with heads sig, bak and a training head
aux_x reports mos, sig and bak, never aux_x, and its mos is that of the MOS-only model it was made from."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import synth_speech
from rich.console import Console
from typer.testing import CliRunner

from jsqa_cli import scoring
from jsqa_cli.cli import app
from jsqa_cli.evaluate import compute_metrics, evaluate, load_eval_data, rich_table
from jsqa_cli.hub import normalize_metrics
from jsqa_cli.labels import read_labelled_csv
from jsqa_cli.model import add_heads, build_model, load_model, save_model

runner = CliRunner()
HEADS_COLUMNS = ["path", "mos", "sig", "bak", *scoring.COLUMNS[2:]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(MOS-only folder, the same model with heads sig, bak, aux_x): the mos head and encoder are shared."""
    folder = tmp_path_factory.mktemp("head_models")
    torch.manual_seed(0)
    base = build_model("tiny", projection_head=False)
    torch.manual_seed(1)
    wide = add_heads(base, ["sig", "bak", "aux_x"])
    return save_model(base, folder / "mos", {"stage": "test"}), save_model(wide, folder / "heads", {"stage": "test"})


@pytest.fixture
def folder(make_audio, tmp_path):
    make_audio("in/one.wav", seconds=1.2, seed=1)
    make_audio("in/two.flac", seconds=2.0, sr=44_100, channels=2, seed=2)
    make_audio("in/long.wav", seconds=9.5, seed=3)  # two windows
    return tmp_path / "in"


def _score(*args, env=None):
    return runner.invoke(app, ["score", *map(str, args), "-j", "0", "--device", "cpu"], env=env)


# --------------------------------------------------------------------------------------------------- score


def test_score_writes_mos_sig_bak_and_never_a_training_head(models, folder, tmp_path):
    mos_dir, heads_dir = models
    r = _score(folder, "-o", tmp_path / "h.csv", "-m", heads_dir)
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "h.csv")
    assert list(df.columns) == HEADS_COLUMNS and "aux_x" not in r.output
    assert len(df) == 3 and df[["mos", "sig", "bak"]].stack().between(1, 5).all()
    assert not np.allclose(df["sig"], df["mos"]) and not np.allclose(df["bak"], df["sig"])  # three heads, not one
    assert "mean SIG" in r.stderr and "mean BAK" in r.stderr
    # the same mos as the MOS-only model: one mos head, whatever heads sit beside it
    r = _score(folder, "-o", tmp_path / "m.csv", "-m", mos_dir)
    assert r.exit_code == 0, r.output
    only = pd.read_csv(tmp_path / "m.csv")
    assert list(only.columns) == scoring.COLUMNS and "mean SIG" not in r.stderr
    assert only["mos"].tolist() == df["mos"].tolist()


def test_segments_carry_every_reported_score(models, folder, tmp_path):
    mos_dir, heads_dir = models
    out, seg = tmp_path / "s.jsonl", tmp_path / "w.csv"
    r = _score(folder / "long.wav", "-o", out, "-m", heads_dir, "--segments", seg, "-q")
    assert r.exit_code == 0, r.output
    windows = pd.read_csv(seg)
    assert list(windows.columns) == ["path", "start_s", "end_s", "mos", "sig", "bak"] and len(windows) == 2
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert list(row) == HEADS_COLUMNS
    for head in ("mos", "sig", "bak"):  # a file's score of each head is the mean of its windows'
        assert row[head] == pytest.approx(windows[head].mean(), abs=1e-4)
    r = _score(folder / "long.wav", "-o", tmp_path / "m.csv", "-m", mos_dir, "--segments", tmp_path / "mw.csv", "-q")
    assert r.exit_code == 0, r.output
    assert list(pd.read_csv(tmp_path / "mw.csv").columns) == scoring.SEGMENT_COLUMNS


def test_failed_file_has_empty_scores_of_every_head(models, folder, tmp_path):
    (folder / "bad.wav").write_bytes(b"")
    r = _score(folder, "-o", tmp_path / "s.jsonl", "-m", models[1], "-q")
    assert r.exit_code == 1
    bad = [x for x in map(json.loads, (tmp_path / "s.jsonl").read_text().splitlines()) if x["error"]]
    assert len(bad) == 1 and bad[0]["mos"] is None and bad[0]["sig"] is None and bad[0]["bak"] is None


def test_resume_keeps_the_columns_and_refuses_another_models_file(models, folder, tmp_path, make_audio):
    mos_dir, heads_dir = models
    for out in (tmp_path / "s.csv", tmp_path / "s.jsonl"):
        assert _score(folder / "one.wav", "-o", out, "-m", heads_dir, "-q").exit_code == 0
        r = _score(folder, "-o", out, "-m", heads_dir, "--resume")
        assert r.exit_code == 0, r.output
        df = scoring.read_scores(out)
        assert list(df.columns) == HEADS_COLUMNS and len(df) == 3 and df["path"].is_unique
        assert "mean SIG" in r.stderr  # the summary of the whole file, rows from before --resume included
        assert set(scoring.summarize(df)) >= {"mean_sig", "mean_bak"}
        # rows of a MOS-only model do not go into a file with sig and bak (nor the other way round)
        make_audio("in/new.wav", seconds=1.5, seed=9)
        r = _score(folder, "-o", out, "-m", mos_dir, "--resume")
        assert r.exit_code == 2 and "cannot append" in r.stderr and "Traceback" not in r.output
        assert r.stderr.strip().count("\n") == 0
        (folder / "new.wav").unlink()


def test_shards_merge_with_sig_and_bak_and_mixed_parts_are_refused(models, folder, tmp_path):
    mos_dir, heads_dir = models
    out = tmp_path / "s.csv"
    for k in range(2):
        assert _score(folder, "-o", out, "-m", heads_dir, "--shard", f"{k}/2", "-q").exit_code == 0
    r = runner.invoke(app, ["score", "--merge-parts", str(out)])
    assert r.exit_code == 0, r.output
    merged = pd.read_csv(out)
    assert list(merged.columns) == HEADS_COLUMNS and len(merged) == 3 and "mean BAK" in r.stderr
    single = scoring.score_files(scoring.find_audio([folder]), str(heads_dir)).set_index("path")
    np.testing.assert_array_equal(merged.set_index("path").loc[single.index, "sig"], single["sig"])
    assert _score(folder, "-o", out, "-m", mos_dir, "--shard", "1/2", "-q", "--overwrite").exit_code == 0
    r = runner.invoke(app, ["score", "--merge-parts", str(out)])
    assert r.exit_code == 2 and "part files differ in columns" in r.stderr and "Traceback" not in r.output


# ---------------------------------------------------------------------------------------------- Python API


def test_python_api_returns_sig_and_bak_on_request(models, folder):
    mos_only, heads = (load_model(m) for m in models)
    waves = [synth_speech(s, seed=i) for i, s in enumerate((1.0, 2.5, 9.5))]
    mos = scoring.score_waveforms(mos_only, waves)
    plain = scoring.score_waveforms(heads, waves)  # as before: an array of MOS
    assert isinstance(plain, np.ndarray) and plain.shape == (3,)
    np.testing.assert_array_equal(plain, mos)
    every = scoring.score_waveforms(heads, waves, outputs="all")
    assert list(every) == ["mos", "sig", "bak"]
    np.testing.assert_array_equal(every["mos"], mos)
    assert all(((v >= 1) & (v <= 5)).all() for v in every.values())
    assert list(scoring.score_waveforms(mos_only, waves, outputs="all")) == ["mos"]
    # a head named explicitly, a training head included, comes from the same pass
    some = scoring.score_waveforms(heads, waves, outputs=["bak", "aux_x"])
    assert list(some) == ["bak", "aux_x"]
    np.testing.assert_array_equal(some["bak"], every["bak"])
    with pytest.raises(ValueError, match=r"has no 'sig' score \(it gives mos\)$"):
        scoring.score_waveforms(mos_only, waves, outputs=["sig"])
    [(bounds, win)] = scoring.predict_windows(heads, waves[2:], outputs="all")
    assert len(bounds) == 2 and list(win) == ["mos", "sig", "bak"] and win["sig"].shape == (2,)
    assert scoring.file_score(win["sig"]) == pytest.approx(every["sig"][2], abs=1e-4)
    [(_, mos_windows)] = scoring.predict_windows(heads, waves[2:])
    np.testing.assert_array_equal(mos_windows, win["mos"])
    # score_files: the DataFrame gets the columns; segments too
    paths = scoring.find_audio([folder])
    df = scoring.score_files(paths, heads, segments=True)
    assert list(df.columns) == HEADS_COLUMNS and list(df.attrs["segments"].columns)[-3:] == ["mos", "sig", "bak"]
    assert list(scoring.score_files(paths, mos_only).columns) == scoring.COLUMNS


def test_reported_outputs_are_mos_then_sig_then_bak():
    model = build_model("tiny", extra_heads=["aux_t", "bak", "sig"])
    assert scoring.reported_outputs(model) == ["mos", "sig", "bak"]
    assert scoring.reported_outputs(build_model("tiny", extra_heads=["bak"])) == ["mos", "bak"]
    assert scoring.columns_for(["mos", "bak"])[:3] == ["path", "mos", "bak"]
    wave = [synth_speech(1.5)]
    with torch.no_grad():
        scores = model.eval().scores(torch.from_numpy(wave[0])[None])[0]
    got = scoring.score_waveforms(model, wave, outputs="all")
    for k, name in enumerate(model.config.outputs):  # each name reads its own head
        if name in got:
            assert got[name][0] == pytest.approx(float(scores[k]), abs=1e-4)


# ------------------------------------------------------------------------------------------------ evaluate


@pytest.fixture
def labels(make_audio, tmp_path):
    """Six files in three conditions, with mos, sig and bak labels (one sig cell empty)."""
    rows = []
    for i in range(6):
        make_audio(f"lab/f{i}.wav", seconds=1.2 + 0.3 * i, seed=20 + i)
        rows.append((f"f{i}.wav", 1.5 + 0.5 * i, 2.0 + 0.4 * i if i != 4 else None, 4.5 - 0.5 * i, "ABC"[i % 3]))
    csv = tmp_path / "lab" / "labels.csv"
    pd.DataFrame(rows, columns=["path", "mos", "SIG", "bak", "condition"]).to_csv(csv, index=False)
    return csv


def test_labels_keep_sig_and_bak(labels, tmp_path):
    df = read_labelled_csv(labels)
    assert list(df.columns[:5]) == ["path", "mos", "condition", "sig", "bak"]
    assert df["sig"].isna().sum() == 1 and df["bak"].tolist()[0] == 4.5
    (tmp_path / "bad.csv").write_text("path,mos,sig\na.wav,3,4\nb.wav,3,good\n")
    with pytest.raises(ValueError, match="bad.csv: row 3: sig is not a number"):
        read_labelled_csv(tmp_path / "bad.csv")


def test_evaluate_measures_every_scale_the_labels_and_model_share(models, labels, tmp_path):
    data, _, info = load_eval_data(csv=labels)
    res = evaluate([str(models[1])], data, tmp_path / "ev", device="cpu", data_info=info, plot=False)
    assert res.scales == ["mos", "sig", "bak"] and not res.notes and res.failed == 0
    t = res.metrics
    assert t[["scale", "level"]].drop_duplicates().values.tolist() == [
        [s, lv] for s in ("mos", "sig", "bak") for lv in ("file", "condition")
    ]
    scored = scoring.score_files(data["path"], str(models[1]), device="cpu")
    for scale in ("mos", "sig", "bak"):
        np.testing.assert_array_equal(res.predictions[f"{scale}_pred"], scored[scale])
        row = t[(t.scale == scale) & (t.level == "file")].iloc[0]
        want = compute_metrics(scored[scale], data[scale])
        assert row["n"] == want["n"] == (5 if scale == "sig" else 6)  # the file without a sig label is left out
        assert row["rmse"] == pytest.approx(want["rmse"]) and row["srcc"] == pytest.approx(want["srcc"])
        assert t[(t.scale == scale) & (t.level == "condition")].iloc[0]["n"] == 3
    written = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    assert {"sig", "sig_pred", "bak", "bak_pred"} <= set(written.columns)
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["scales"] == ["mos", "sig", "bak"]
    assert {(r["scale"], r["level"]) for r in doc["metrics"]} == {
        (s, lv) for s in ("mos", "sig", "bak") for lv in ("file", "condition")
    }
    # a model card made from this metrics.json keeps the P.835 rows apart from the MOS rows
    levels = [r["level"] for r in normalize_metrics(doc)]
    assert levels == ["file", "condition", "SIG file", "SIG condition", "BAK file", "BAK condition"]
    console = Console(width=200, record=True)
    console.print(rich_table(t, title="6 labelled files"))
    text = console.export_text()
    assert "6 labelled files: MOS" in text and "SIG (P.835 speech signal)" in text and "BAK (P.835" in text


def test_evaluate_mos_only_model_skips_sig_and_bak_with_a_note(models, labels, tmp_path):
    data, _, _ = load_eval_data(csv=labels)
    res = evaluate([str(models[0]), str(models[1])], data, tmp_path / "ev", device="cpu", plot=False)
    assert res.notes == [
        f"sig, bak labels not evaluated for {models[0]}: the model predicts only mos (it has no sig/bak head)"
    ]
    t = res.metrics
    assert t[t.scale == "mos"]["model"].nunique() == 2
    sig = t[t.scale == "sig"]
    assert sig["model"].unique().tolist() == [str(models[1])]  # no row for the model without the head
    assert sig["rmse_change_pct"].isna().all()  # the reference (first) model has no sig to compare with
    mos_file = t[(t.scale == "mos") & (t.level == "file")]
    assert mos_file["rmse"].nunique() == 1  # one mos head: the same numbers for both models
    console = Console(width=200, record=True)
    console.print(rich_table(t))
    text = console.export_text()  # the Δ% note once, under MOS: the only scale both models give
    assert text.count("improvement over the first model") == 1 and text.index("ΔRMSE") < text.index("improvement")
    assert text.index("improvement") < text.index("SIG (P.835")
    # the command: one line saying what was skipped and why; files for a MOS-only model as before
    r = runner.invoke(
        app,
        ["evaluate", "-m", str(models[0]), "--csv", str(labels), "-o", str(tmp_path / "o"), "--device", "cpu"]
        + ["-j", "0", "--no-plot"],
        env={"COLUMNS": "200"},
    )
    assert r.exit_code == 0, r.output
    notes = [line for line in r.stderr.splitlines() if "not evaluated" in line]
    assert len(notes) == 1 and "sig, bak" in notes[0] and "predicts only mos" in notes[0]
    assert "SIG" not in r.stdout and "RMSE" in r.stdout
    written = pd.read_csv(tmp_path / "o" / "predictions.csv")
    assert list(written.columns) == [
        "model", "dataset", "condition", "path", "mos", "mos_pred", "segments", "duration_s", "error"
    ]  # fmt: skip
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert doc["scales"] == ["mos"] and {r["scale"] for r in doc["metrics"]} == {"mos"}


def test_cli_evaluate_prints_one_block_per_scale(models, labels, tmp_path):
    r = runner.invoke(
        app,
        ["evaluate", "-m", str(models[1]), "--csv", str(labels), "-o", str(tmp_path / "o"), "--device", "cpu"]
        + ["-j", "0", "--no-plot"],
        env={"COLUMNS": "200"},
    )
    assert r.exit_code == 0, r.output
    assert "not evaluated" not in r.output
    for title in ("labelled files: MOS", "labelled files: SIG", "labelled files: BAK"):
        assert title in r.stdout


def test_cli_evaluate_note_is_one_line_whatever_the_width(models, labels, tmp_path):
    """A note longer than the console's 80 columns (a log, a pipe) is printed whole: one line to grep or paste."""
    r = runner.invoke(
        app,
        ["evaluate", "-m", str(models[0]), "--csv", str(labels), "-o", str(tmp_path / "o"), "--device", "cpu"]
        + ["-j", "0", "--no-plot", "-q"],
    )
    assert r.exit_code == 0, r.output
    note = f"Note: sig, bak labels not evaluated for {models[0]}: the model predicts only mos (it has no sig/bak head)"
    assert len(note) > 80 and note in r.stderr.splitlines()


# ---------------------------------------------------------------------------------------------------- info


def test_info_lists_the_scores(models):
    mos_dir, heads_dir = models
    r = runner.invoke(app, ["info", str(heads_dir)], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    [line] = [x for x in r.stdout.splitlines() if x.lstrip("│ ").startswith("scores")]
    assert "mos, sig, bak" in line and "training heads, not reported: aux_x" in line
    r = runner.invoke(app, ["info", str(mos_dir)], env={"COLUMNS": "300"})
    [line] = [x for x in r.stdout.splitlines() if x.lstrip("│ ").startswith("scores")]
    assert line.split("scores")[1].strip(" │") == "mos"
    doc = json.loads(runner.invoke(app, ["info", str(heads_dir), "--json"]).stdout)
    assert doc["scores"] == ["mos", "sig", "bak"] and doc["other_heads"] == ["aux_x"]


def test_model_card_explains_the_three_scales_only_when_there_are_heads(models):
    from jsqa_cli.hub import model_card

    mos_dir, heads_dir = models
    with_heads, mos_only = model_card(heads_dir, "jsqa/h").text, model_card(mos_dir, "jsqa/m").text
    assert "P.835 SIG" in with_heads and "P.835 BAK" in with_heads and "MOS, SIG, BAK heads" in with_heads
    assert "aux_x" not in with_heads.split("## Training data")[0]  # a training head is not a score
    assert "P.835" not in mos_only and "→ MOS head" in mos_only


def test_bundling_drops_training_heads_and_credits_dnsmos(models, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    import bundle_model

    _, heads_dir = models
    dest = bundle_model.write_model_folder(heads_dir, tmp_path / "shipped", name="jsqa-test")
    config = json.loads((dest / "config.json").read_text())
    assert config["extra_heads"] == ["sig", "bak"] and config["metadata"]["dropped_heads"] == ["aux_x"]
    assert "DNSMOS P.835 SIG and BAK" in (dest / "README.md").read_text()  # credited (CC BY 4.0)
    assert "Microsoft" in config["metadata"]["training_data"]["labels"]
    wav = torch.from_numpy(synth_speech(2.0, 16_000, seed=4)).float()[None]
    shipped, source = load_model(dest), load_model(heads_dir)
    assert torch.allclose(shipped.scores(wav), source.scores(wav)[:, :3])  # mos, sig, bak unchanged
