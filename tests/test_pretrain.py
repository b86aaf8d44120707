"""Contrastive pretraining: the NT-Xent losses, validation metrics, the loop, exact resume, export, CLI."""

from __future__ import annotations

import json
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from jsqa_cli import pairs as P
from jsqa_cli import pretrain as T
from jsqa_cli.cli import app
from jsqa_cli.model import load_model
from jsqa_cli.train import read_metrics

FAST = dict(
    preset="tiny", batch_size=4, workers=0, eval_every=1000, val_max_pairs=8, log_every=1, quiet=True, warmup_steps=1
)


@pytest.fixture(scope="module")
def pairs_dir(jnd_sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("pt") / "pairs"
    P.make_pairs(
        [jnd_sources / "speech"], [jnd_sources / "noise"], out, num_pairs=28, seconds=1.0, seed=0, val_fraction=0.2
    )
    return out


# ---------------------------------------------------------------------------------------------- losses


def _reference_nt_xent(z, n, tau, snr=None, jnd=None):
    z = F.normalize(z, dim=-1)
    losses = []
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        terms = []
        for k in range(len(z)):
            masked = k == i or (jnd is not None and k != p and abs(float(snr[i] - snr[k])) <= jnd)
            if not masked:
                terms.append(float(z[i] @ z[k]) / tau)
        losses.append(-float(z[i] @ z[p]) / tau + math.log(sum(math.exp(t) for t in terms)))
    return sum(losses) / len(losses)


def test_nt_xent_matches_the_formula_with_and_without_jnd_mask():
    torch.manual_seed(0)
    n = 3
    z = torch.randn(3 * n, 5)  # a, b and hard negatives
    snr = torch.tensor([0.0, 5.0, 10.0, 1.0, 6.5, 9.0, 7.0, 12.0, 3.5])
    assert float(T.nt_xent(z, snr, n, 0.1)) == pytest.approx(_reference_nt_xent(z, n, 0.1), rel=1e-5)
    assert float(T.nt_xent(z, snr, n, 0.5, jnd_db=3.0)) == pytest.approx(
        _reference_nt_xent(z, n, 0.5, snr, 3.0), rel=1e-5
    )


def test_jnd_mask_ignores_views_within_the_jnd():
    torch.manual_seed(1)
    z, snr = torch.randn(8, 6), torch.tensor([0.0, 10.0, 20.0, 30.0, 1.0, 11.0, 21.0, 31.0])
    twin = z.clone()
    twin[1] = z[0] * 3  # view 1 looks exactly like anchor 0...
    snr_twin = snr.clone()
    snr_twin[1] = 2.0  # ...and is within the JND of it: jnd-aware masks it, plain NT-Xent pushes it away
    assert float(T.nt_xent(twin, snr_twin, 4, 0.1, jnd_db=3.0)) < float(T.nt_xent(twin, snr_twin, 4, 0.1))
    far = snr_twin.clone()
    far[1] = 12.0  # the same look-alike outside the JND is a negative again
    assert float(T.nt_xent(twin, far, 4, 0.1, jnd_db=3.0)) > float(T.nt_xent(twin, snr_twin, 4, 0.1, jnd_db=3.0))
    same_snr = torch.zeros(8)  # every view within the JND: only the positive remains → loss 0
    assert float(T.nt_xent(z, same_snr, 4, 0.1, jnd_db=3.0)) == pytest.approx(0.0, abs=1e-6)


def test_validation_metrics():
    a = F.normalize(torch.randn(16, 8), dim=-1)
    assert T.retrieval_top1(a, a + 1e-3 * torch.randn(16, 8)) == 1.0
    assert T.retrieval_top1(a, torch.randn(16, 8)) < 0.5
    align, uniform = T.alignment_uniformity(a, a)
    assert align == pytest.approx(0.0, abs=1e-6) and uniform < 0
    snr = torch.linspace(-5, 20, 30)
    emb = torch.randn(30, 1, 4) * 0.01
    emb[:, 0, 0] += snr  # first principal direction carries SNR
    assert T.snr_order(emb, snr[:, None]) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- loop


def test_pretrain_logs_validates_and_exports(pairs_dir, tmp_path):
    out = tmp_path / "run"
    encoder = T.pretrain(
        pairs=str(pairs_dir),
        output=str(out),
        steps=4,
        eval_every=2,
        hard_negatives=True,
        **{k: v for k, v in FAST.items() if k != "eval_every"},
    )
    assert encoder == out / "encoder"
    records = read_metrics(out)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_top1" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in train)
    assert {"lr", "pairs_per_s", "grad_norm", "epoch"} <= set(train[0])
    assert [r["step"] for r in val] == [0, 2, 4]
    assert {"val_top1", "val_align", "val_uniform", "jnd_cos", "gap_cos", "jnd_margin", "snr_rank"} <= set(val[0])
    model = load_model(encoder)
    assert model.metadata["stage"] == "pretrained" and model.metadata["steps"] == 4
    assert model.metadata["pairing"] == "cross-source" and model.config.preset == "tiny"
    assert model.metadata["hardware"] == f"CPU, {len(os.sched_getaffinity(0))} cores"  # what it ran on, for cards
    assert model.projection is not None
    assert (out / "checkpoint.pt").is_file() and json.loads((out / "options.json").read_text())["steps"] == 4


def test_no_projection_head_and_config_file(pairs_dir, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"preset": "tiny", "d_model": 16, "n_heads": 2}))
    encoder = T.pretrain(
        pairs=str(pairs_dir),
        output=str(tmp_path / "r"),
        steps=1,
        projection_head=False,
        config_file=str(cfg),
        negatives="batch",
        **FAST,
    )
    model = load_model(encoder)
    assert model.projection is None and model.config.d_model == 16


def test_resume_continues_exactly(pairs_dir, tmp_path):
    opts = dict(pairs=str(pairs_dir), steps=6, checkpoint_every=100, **FAST)
    T.pretrain(output=str(tmp_path / "full"), **opts)
    T.pretrain(output=str(tmp_path / "cut"), stop_after=3, **opts)
    assert not (tmp_path / "cut" / "encoder").exists()
    # the resumed half also uses a loader worker: data must not depend on worker RNG state
    T.pretrain(output=str(tmp_path / "cut"), resume=True, **{**opts, "workers": 1})
    full = [r["loss"] for r in read_metrics(tmp_path / "full") if "loss" in r]
    cut = [r["loss"] for r in read_metrics(tmp_path / "cut") if "loss" in r]
    assert len(full) == len(cut) == 6
    assert cut == pytest.approx(full, rel=1e-4, abs=1e-5)
    assert (tmp_path / "cut" / "encoder").is_dir()


def test_warns_when_the_task_is_trivial(jnd_sources, tmp_path):
    # same-source pairs at identical SNRs: the two members are the same signal, retrieval is 100 % at step 0
    pairs = tmp_path / "same"
    P.make_pairs(
        [jnd_sources / "speech"],
        [jnd_sources / "noise"],
        pairs,
        num_pairs=20,
        seconds=1.0,
        jnd_db=0.0,
        pairing="same-source",
        val_fraction=0.4,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        T.pretrain(pairs=str(pairs), output=str(tmp_path / "r"), steps=1, **FAST)
    assert any("solved trivially" in str(w.message) for w in caught)
    assert any("warning" in r for r in read_metrics(tmp_path / "r"))


def test_worker_failure_is_one_clear_error(pairs_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    df, _ = P.read_manifest(pairs_dir)
    df["noise_a"] = str(tmp_path / "deleted.wav")
    df.to_csv(broken / P.MANIFEST_NAME, index=False)
    with pytest.raises(P.PairDataError) as err:
        T.pretrain(pairs=str(broken), output=str(tmp_path / "r"), steps=2, **{**FAST, "workers": 1})
    assert "\n" not in str(err.value) and "deleted.wav: no such file" in str(err.value)


def test_cli_pretrain(pairs_dir, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "pretrain",
            "--pairs",
            str(pairs_dir),
            "-o",
            str(tmp_path / "r"),
            "--preset",
            "tiny",
            "--steps",
            "2",
            "-b",
            "4",
            "--workers",
            "0",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Pretrained encoder:" in res.output
    bad = CliRunner().invoke(app, ["pretrain", "--pairs", str(tmp_path), "-o", str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "not a pairs folder" in bad.output
    bad = CliRunner().invoke(
        app, ["pretrain", "--pairs", str(pairs_dir), "-o", str(tmp_path / "r3"), "--negatives", "all"]
    )
    assert bad.exit_code == 2 and "--negatives must be one of" in bad.output


def test_grad_clip_0_trains(pairs_dir, tmp_path):
    """--grad-clip 0 is off (it used to zero every gradient): the weights move and the loss falls."""
    start = load_model(T.pretrain(pairs=str(pairs_dir), output=str(tmp_path / "s"), steps=1, lr=0.0, **FAST))
    encoder = T.pretrain(
        pairs=str(pairs_dir), output=str(tmp_path / "r"), steps=8, grad_clip=0.0, lr=2e-3, weight_decay=0.0, **FAST
    )
    trained = load_model(encoder).state_dict()
    moved = [k for k, v in start.state_dict().items() if k.startswith("encoder.") and not torch.equal(v, trained[k])]
    assert len(moved) > 10
    losses = [r["loss"] for r in read_metrics(tmp_path / "r") if "loss" in r]
    assert len(losses) == 8 and sum(losses[-3:]) < sum(losses[:3])


def test_an_existing_run_folder_needs_resume_or_overwrite(pairs_dir, tmp_path):
    opts = dict(pairs=str(pairs_dir), output=str(tmp_path / "r"), steps=2, **FAST)
    T.pretrain(**opts)
    with pytest.raises(ValueError, match="already holds a pretraining run; --resume continues it, --overwrite"):
        T.pretrain(**opts)
    T.pretrain(**{**opts, "steps": 3}, resume=True)
    assert [r["step"] for r in read_metrics(tmp_path / "r") if "loss" in r] == [1, 2, 3]
    T.pretrain(**opts, overwrite=True)
    assert [r["step"] for r in read_metrics(tmp_path / "r") if "loss" in r] == [1, 2]
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        T.pretrain(**{**opts, "output": str(tmp_path / "new")}, resume=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grad-clip", "-1"], "--grad-clip -1.0: give a positive gradient-norm limit, or 0 for no clipping"),
        (["--steps", "0"], "--steps 0: train at least 1 step"),
        (["--log-every", "-1"], "--log-every -1: must not be negative"),
        (["--eval-every", "-2"], "--eval-every -2: must not be negative"),
        (["--checkpoint-every", "-1"], "--checkpoint-every -1: must not be negative"),
        (["--stop-after", "0"], "--stop-after 0: stop after at least 1 step"),
        (["--workers", "-1"], "--workers -1"),
        (["--device", "gpu"], "--device 'gpu': choose auto, cpu, cuda or cuda:N"),
        (["--resume", "--overwrite"], "choose one"),
    ],
)
def test_cli_pretrain_usage_mistakes_are_one_line(pairs_dir, tmp_path, args, message):
    res = CliRunner().invoke(
        app, ["pretrain", "--pairs", str(pairs_dir), "-o", str(tmp_path / "r"), "--preset", "tiny", "-q", *args]
    )
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_cli_pretrain_help_speaks_the_shared_vocabulary():
    res = CliRunner().invoke(app, ["pretrain", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for option in (
        "--steps",
        "--eval-every",
        "--log-every",
        "--checkpoint-every",
        "--lr ",
        "--output",
        "--workers",
        "--device",
        "--resume",
        "--overwrite",
        "--stop-after",
        "--no-projection-head",
    ):
        assert option in res.output, option
    assert "--max-steps" not in res.output and "--val-every" not in res.output and "--out " not in res.output
