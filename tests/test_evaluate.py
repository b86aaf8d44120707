"""Evaluation: metric functions against scipy and known values, per-condition means, relative changes, the
comparison table, evaluate == score, written files, partial failures, and the `jsqa evaluate` command."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from nisqa_fixture import build_nisqa_corpus
from scipy import stats
from typer.testing import CliRunner

from jsqa_cli.cli import app
from jsqa_cli.evaluate import (
    compute_metrics,
    condition_means,
    evaluate,
    load_eval_data,
    mae,
    metrics_table,
    pcc,
    relative_change,
    rich_table,
    rmse,
    srcc,
)
from jsqa_cli.model import build_model, save_model
from jsqa_cli.scoring import score_files

TEST_DBS = ["NISQA_TEST_FOR", "NISQA_TEST_P501"]
runner = CliRunner()


@pytest.fixture(scope="module")
def nisqa_root(tmp_path_factory):
    return build_nisqa_corpus(tmp_path_factory.mktemp("nisqa_eval") / "NISQA_Corpus")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_models")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(
            str(save_model(build_model("tiny", projection_head=False), folder / f"m{seed}", {"stage": "finetuned"}))
        )
    return paths


# ------------------------------------------------------------------------------------------------ metrics


def test_metrics_known_values():
    pred, true = [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0]
    assert rmse(pred, true) == pytest.approx(0.5)
    assert mae(pred, true) == pytest.approx(0.25)
    assert srcc(pred, true) == pytest.approx(1.0)
    assert pcc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pcc([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


def test_metrics_match_scipy_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    true = np.round(rng.uniform(1, 5, 200), 1)  # ties, as in real MOS
    pred = np.clip(true + rng.normal(0, 0.6, 200), 1, 5).round(1)
    assert pcc(pred, true) == pytest.approx(stats.pearsonr(pred, true)[0], abs=1e-12)
    assert srcc(pred, true) == pytest.approx(stats.spearmanr(pred, true)[0], abs=1e-12)
    assert rmse(pred, true) == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)), abs=1e-12)
    assert mae(pred, true) == pytest.approx(np.mean(np.abs(pred - true)), abs=1e-12)


def test_metrics_skip_nan_pairs_and_degenerate_inputs_give_nan():
    m = compute_metrics([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0])
    assert m["n"] == 3 and m["rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert math.isnan(pcc([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]))  # a constant predictor has no correlation
    assert math.isnan(pcc([1.0], [2.0])) and math.isnan(rmse([], []))
    with pytest.raises(ValueError, match="differ in shape"):
        rmse([1, 2], [1, 2, 3])


def test_relative_change_is_positive_for_improvements():
    assert relative_change(0.82, 1.0, "rmse") == pytest.approx(18.0)  # error down 18 %: +18
    assert relative_change(1.1, 1.0, "mae") == pytest.approx(-10.0)  # error up: negative
    assert relative_change(0.92, 0.8, "pcc") == pytest.approx(15.0)  # correlation up 15 %: +15
    assert relative_change(0.4, 0.5, "srcc") == pytest.approx(-20.0)
    assert math.isnan(relative_change(0.5, 0.0, "pcc")) and math.isnan(relative_change(math.nan, 1.0, "rmse"))


def test_condition_means_group_within_db_and_take_condition_mos():
    df = pd.DataFrame(
        {
            "db": ["A", "A", "A", "B", "B"],
            "condition": ["1", "1", "2", "1", "1"],
            "mos": [2.0, 4.0, 1.0, 5.0, 3.0],
            "mos_pred": [2.5, 3.5, 1.5, 4.0, 4.0],
        }
    )
    g = condition_means(df)
    assert g[["db", "condition", "n_files"]].values.tolist() == [["A", "1", 2], ["A", "2", 1], ["B", "1", 2]]
    assert g["mos"].tolist() == [3.0, 1.0, 4.0] and g["mos_pred"].tolist() == [3.0, 1.5, 4.0]
    con = pd.DataFrame({"db": ["A", "B"], "condition": ["1", "1"], "mos": [3.3, 4.4]})
    assert condition_means(df, con)["mos"].tolist() == [3.3, 1.0, 4.4]  # A/2 has no entry: mean of its files


def test_metrics_table_levels_datasets_and_changes():
    rng = np.random.default_rng(1)
    true = rng.uniform(1, 5, 40)
    base = pd.DataFrame(
        {
            "dataset": np.repeat(["D1", "D2"], 20),
            "condition": np.tile(list("abcde"), 8),
            "path": [f"f{i}" for i in range(40)],
            "mos": true,
        }
    )
    preds = pd.concat(
        [
            base.assign(model="scratch", mos_pred=true + rng.normal(0, 1.0, 40)),
            base.assign(model="jsqa", mos_pred=true + rng.normal(0, 0.3, 40)),
        ]
    )
    t = metrics_table(preds)
    assert t[["dataset", "level"]].drop_duplicates().values.tolist() == [
        ["D1", "file"],
        ["D1", "condition"],
        ["D2", "file"],
        ["D2", "condition"],
        ["all", "file"],
        ["all", "condition"],
    ]
    assert t["model"].tolist()[:2] == ["scratch", "jsqa"]
    d1 = t[(t.dataset == "D1") & (t.level == "file")].set_index("model")
    assert d1.loc["jsqa", "n"] == 20 and d1.loc["scratch", "rmse"] == pytest.approx(
        rmse(preds[(preds.model == "scratch")].mos_pred[:20], true[:20])
    )
    assert math.isnan(d1.loc["scratch", "rmse_change_pct"])
    assert d1.loc["jsqa", "rmse_change_pct"] == pytest.approx(
        (d1.loc["scratch", "rmse"] - d1.loc["jsqa", "rmse"]) / d1.loc["scratch", "rmse"] * 100
    )
    assert d1.loc["jsqa", "rmse_change_pct"] > 0 and d1.loc["jsqa", "pcc_change_pct"] > 0
    assert (t[t.level == "condition"]["n"] == [5, 5, 5, 5, 10, 10]).all()  # conditions are per dataset in "all"
    # a scale labelled in one dataset only gets no "all" rows: they would repeat that dataset's
    sig = preds.assign(sig=np.where(preds["dataset"] == "D1", preds["mos"], np.nan), sig_pred=preds["mos_pred"])
    t = metrics_table(sig)
    assert set(t[t.scale == "mos"]["dataset"]) == {"D1", "D2", "all"}
    assert set(t[t.scale == "sig"]["dataset"]) == {"D1"}  # nor rows of n = 0 for D2, which has no sig labels
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(rich_table(t))
    text = console.export_text()
    assert "ΔRMSE" in text and "improvement over the first model" in text


# ------------------------------------------------------------------------------------------------ evaluate


def test_evaluate_nisqa_two_models_equals_score(nisqa_root, two_models, tmp_path):
    data, con, info = load_eval_data(nisqa_root=nisqa_root, dbs=TEST_DBS)
    assert len(data) == 10 and con is not None and info["db"] == TEST_DBS
    res = evaluate(two_models, data, tmp_path / "ev", condition_mos=con, device="cpu", data_info=info)
    assert res.failed == 0 and res.models[0]["label"] == two_models[0]
    # the scoring path of `jsqa score`: identical numbers, file by file
    for label in two_models:
        rows = score_files(data["path"], label, device="cpu")
        got = res.predictions[res.predictions.model == label]
        assert got["mos_pred"].tolist() == rows["mos"].tolist()
    written = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    assert len(written) == 20 and {"model", "dataset", "condition", "path", "mos", "mos_pred"} <= set(written.columns)
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["reference_model"] == two_models[0] and "positive = better" in doc["sign_convention"]
    levels = {(r["dataset"], r["level"]) for r in doc["metrics"]}
    assert ("NISQA_TEST_FOR", "condition") in levels and ("all", "file") in levels
    # per condition, the true MOS comes from <DB>_con.csv
    for_cond = res.metrics[(res.metrics.dataset == "NISQA_TEST_FOR") & (res.metrics.level == "condition")]
    assert for_cond["n"].tolist() == [3, 3]
    p = res.predictions[(res.predictions.model == two_models[0]) & (res.predictions.db == "NISQA_TEST_FOR")]
    cm = condition_means(p, con)
    assert for_cond.iloc[0]["rmse"] == pytest.approx(rmse(cm["mos_pred"], cm["mos"]))
    assert cm["mos"].tolist() == con[con.db == "NISQA_TEST_FOR"]["mos"].tolist()
    if _has_matplotlib():
        assert (tmp_path / "ev" / "scatter.png").stat().st_size > 1000


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def test_evaluate_equals_the_score_command(nisqa_root, two_models, tmp_path):
    data, _, _ = load_eval_data(nisqa_root=nisqa_root, dbs=["NISQA_TEST_FOR"])
    res = runner.invoke(
        app, ["score", *data["path"], "-m", two_models[1], "-o", str(tmp_path / "s.csv"), "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    scored = pd.read_csv(tmp_path / "s.csv").set_index("path")["mos"]
    ev = evaluate([two_models[1]], data, None, device="cpu", plot=False).predictions.set_index("path")["mos_pred"]
    assert np.array_equal(scored.loc[ev.index].to_numpy(), ev.to_numpy())


def test_evaluate_without_matplotlib_skips_the_plot(nisqa_root, two_models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    data, _, _ = load_eval_data(nisqa_root=nisqa_root, dbs=["NISQA_TEST_P501"])
    res = evaluate(two_models[:1], data, tmp_path / "ev", device="cpu")
    assert not (tmp_path / "ev" / "scatter.png").exists() and "scatter" not in res.files
    assert any("matplotlib is not installed" in n for n in res.notes)


def test_load_eval_data_errors(nisqa_root, tmp_path):
    with pytest.raises(ValueError, match="either --nisqa-root .* or --csv"):
        load_eval_data()
    with pytest.raises(ValueError, match="no database NISQA_TEST_X"):
        load_eval_data(nisqa_root=nisqa_root, dbs=["NISQA_TEST_X"])


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_evaluate_csv_with_a_broken_file_is_partial(nisqa_root, two_models, tmp_path):
    data, _, _ = load_eval_data(nisqa_root=nisqa_root, dbs=["NISQA_TEST_FOR"])
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    rows = [
        *[(p, m, c) for p, m, c in zip(data["path"], data["mos"], data["condition"])],
        ("broken.wav", 3.0, "1"),
        ("missing.wav", 2.0, "2"),
    ]
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["path", "mos", "condition"]).to_csv(csv, index=False)
    res = runner.invoke(
        app,
        [
            "evaluate",
            "-m",
            two_models[0],
            "-m",
            two_models[1],
            "--csv",
            str(csv),
            "-o",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--quiet",
        ],
    )
    assert res.exit_code == 1, res.output
    assert "4 file score(s) failed" in res.output  # 2 files × 2 models
    pred = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    errors = pred[pred["error"] != ""]
    assert sorted(set(errors["path"].map(lambda p: p.rsplit("/", 1)[-1]))) == ["broken.wav", "missing.wav"]
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    file_rows = [r for r in doc["metrics"] if r["level"] == "file"]
    assert [r["n"] for r in file_rows] == [6, 6]
    assert file_rows[0]["rmse_change_pct"] is None and file_rows[1]["rmse_change_pct"] is not None


def test_cli_evaluate_several_csvs_gives_metrics_per_csv_and_for_all(nisqa_root, two_models, tmp_path):
    data, _, _ = load_eval_data(nisqa_root=nisqa_root, dbs=["NISQA_TEST_FOR", "NISQA_TEST_P501"])
    csvs = []
    for folder, db in (("a", "NISQA_TEST_FOR"), ("b", "NISQA_TEST_P501")):  # the same stem in two folders
        (tmp_path / folder).mkdir()
        csvs.append(tmp_path / folder / "test.csv")
        data[data["db"] == db][["path", "mos", "condition"]].to_csv(csvs[-1], index=False)
    res = runner.invoke(
        app,
        [
            "evaluate",
            "-m",
            two_models[0],
            "--csv",
            str(csvs[0]),
            "--csv",
            str(csvs[1]),
            "-o",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--quiet",
            "--no-plot",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    n_files = {r["dataset"]: r["n"] for r in doc["metrics"] if r["level"] == "file"}
    counts = data["db"].value_counts()
    assert n_files == {"a/test": counts["NISQA_TEST_FOR"], "b/test": counts["NISQA_TEST_P501"], "all": len(data)}
    # conditions are numbered per CSV: the same condition label in two CSVs stays two conditions
    n_cond = {r["dataset"]: r["n"] for r in doc["metrics"] if r["level"] == "condition"}
    assert n_cond["all"] == n_cond["a/test"] + n_cond["b/test"]
    res = runner.invoke(app, ["evaluate", "-m", two_models[0], "--csv", str(csvs[0]), "--csv", str(csvs[0])])
    assert res.exit_code == 2 and "test.csv: given twice as --csv" in res.output


def test_cli_evaluate_nisqa_prints_the_comparison_table(nisqa_root, two_models, tmp_path):
    res = runner.invoke(
        app,
        [
            "evaluate",
            "-m",
            two_models[0],
            "-m",
            two_models[1],
            "--nisqa-root",
            str(nisqa_root),
            "--db",
            "NISQA_TEST_FOR",
            "-o",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--no-plot",
        ],
        env={"COLUMNS": "220"},
    )
    assert res.exit_code == 0, res.output
    assert "ΔPCC" in res.output and "condition" in res.output and "metrics.json" in res.output
    res = runner.invoke(app, ["evaluate", "-m", two_models[0], "--csv", str(tmp_path / "none.csv")])
    assert res.exit_code == 2 and "none.csv: no such file" in res.output and "Traceback" not in res.output


def test_cli_evaluate_without_model_uses_the_default_as_score_does(nisqa_root, two_models, tmp_path):
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--nisqa-root",
            str(nisqa_root),
            "--db",
            "NISQA_TEST_FOR",
            "-o",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--no-plot",
            "--quiet",
        ],
        env={"JSQA_MODEL": str(two_models[1])},
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert [m["name"] for m in doc["models"]] == [str(two_models[1])]


def test_cli_evaluate_help_has_an_example_and_output():
    res = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "Example" in res.output
    assert "--output" in res.output and "--out " not in res.output and "jsqa[plot]" in res.output


def test_cli_evaluate_without_matplotlib_names_the_extra(nisqa_root, two_models, tmp_path, monkeypatch):
    """The hint survives rich's markup: pip install 'jsqa[plot]', not pip install 'jsqa'."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = runner.invoke(
        app,
        [
            "evaluate",
            "-m",
            two_models[0],
            "--nisqa-root",
            str(nisqa_root),
            "--db",
            "NISQA_TEST_P501",
            "--output",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "-j",
            "0",
            "--quiet",
        ],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert "pip install 'jsqa[plot]'" in res.output and not (tmp_path / "o" / "scatter.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "gpu"], "--device 'gpu': choose auto, cpu, cuda or cuda:N"),
        (["--workers", "-1"], "--workers -1"),
    ],
)
def test_cli_evaluate_usage_mistakes_are_one_line(nisqa_root, tmp_path, args, message):
    res = runner.invoke(app, ["evaluate", "--nisqa-root", str(nisqa_root), "-o", str(tmp_path / "o"), *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
