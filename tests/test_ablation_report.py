"""training/ablation_report.py: the mode table is built from the runs' own files, the mode is chosen on
validation (never on test), and the changes against scratch have the right signs."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import ablation_report  # noqa: E402


def _run(ab: Path, name: str, seed: int, val_pcc: float, pretrain: dict | None = None) -> None:
    d = ab / f"ft-{name}-s{seed}"
    d.mkdir(parents=True)
    meta = {"best_step": 100, "validation": {"rmse": 1 - val_pcc, "mae": 0.5, "pcc": val_pcc, "srcc": val_pcc}}
    (d / "config.json").write_text(json.dumps({"metadata": meta}))
    if pretrain is not None:
        enc = ab / f"pt-{name}" / "encoder"
        enc.mkdir(parents=True, exist_ok=True)
        (enc / "config.json").write_text(json.dumps({"projection_head": pretrain.pop("proj"), "metadata": pretrain}))


def _eval(ab: Path, seed: int, rows: dict[str, tuple[float, float]]) -> None:
    """rows: name -> (test RMSE, test PCC); MAE = RMSE, SRCC = PCC; scratch first as evaluate writes it."""
    metrics = [
        {"level": "file", "model": str(ab / f"ft-{n}-s{seed}"), "rmse": r, "mae": r, "pcc": p, "srcc": p}
        for n, (r, p) in rows.items()
    ]
    (ab / f"eval-s{seed}").mkdir()
    (ab / f"eval-s{seed}" / "metrics.json").write_text(json.dumps({"metrics": metrics}))


def test_report_picks_on_validation_and_signs_changes(tmp_path):
    ab = tmp_path / "ablation"
    pt = {
        "pairing": "cross-source",
        "negatives": "jnd-aware",
        "steps": 10,
        "batch_size": 4,
        "validation": {"val_top1": 0.3, "jnd_margin": -0.01, "snr_rank": 0.4},
    }
    for seed in (0, 1):
        _run(ab, "scratch", seed, 0.5)
        _run(ab, "good-val", seed, 0.8, {**pt, "proj": True} if seed == 0 else None)
        _run(ab, "good-test", seed, 0.6, {**pt, "pairing": "same-source", "proj": False} if seed == 0 else None)
        _eval(ab, seed, {"scratch": (1.0, 0.5), "good-val": (0.9, 0.55), "good-test": (0.5, 0.9)})
    out = tmp_path / "docs" / "ablation.md"
    summary = ablation_report.main([str(ab), "-o", str(out)])

    assert summary["best"] == "good-val"  # the test split (where good-test wins) never chooses
    runs = summary["runs"]
    assert runs["good-val"]["val_pcc_mean"] == pytest.approx(0.8)
    change = runs["good-val"]["change_pct"]["file"]
    assert change["rmse"] == pytest.approx(10.0) and change["pcc"] == pytest.approx(10.0)
    assert runs["good-test"]["change_pct"]["file"]["rmse"] == pytest.approx(50.0)
    text = out.read_text()
    assert "`good-val` **(best on val)**" in text and "same-source" in text and "| off |" in text
    assert json.loads(out.with_suffix(".json").read_text())["best"] == "good-val"


def test_report_without_runs_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ablation_report.main([str(tmp_path)])
    assert "no finished fine-tuning runs" in capsys.readouterr().err
