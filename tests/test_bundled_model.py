"""The model shipped inside the package: it resolves by default, loads offline, and ranks obvious degradations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import synth_speech

from jsqa_cli.model import DEFAULT_MODEL, bundled_models, load_model
from jsqa_cli.scoring import score_files, score_waveforms

pytestmark = pytest.mark.skipif(DEFAULT_MODEL not in bundled_models(), reason="no bundled model in this checkout")


@pytest.fixture(autouse=True)
def _no_model_override(monkeypatch):
    monkeypatch.delenv("JSQA_MODEL", raising=False)  # "the default" here is the bundled model, whatever the shell says


def test_default_model_loads_with_provenance_and_metrics():
    model = load_model()
    assert model.name == DEFAULT_MODEL
    assert model.config.preset == "small" and not model.config.projection_head
    assert model.metadata["stage"] == "finetuned" and 0 < model.metadata["validation"]["pcc"] <= 1
    folder = bundled_models()[DEFAULT_MODEL]
    assert {"config.json", "model.safetensors", "README.md", "metrics.json"} <= {p.name for p in folder.iterdir()}


def test_default_model_scores_noisy_and_clipped_speech_below_clean():
    rng = np.random.default_rng(0)
    clean = synth_speech(4.0, seed=3, level=0.1)
    noisy = clean + rng.standard_normal(len(clean)).astype(np.float32) * np.sqrt(np.mean(clean**2))  # 0 dB SNR
    clipped = np.clip(clean * 30, -0.1, 0.1).astype(np.float32)
    mos = score_waveforms(load_model(), [clean, noisy, clipped])
    assert np.all((mos >= 1) & (mos <= 5))
    assert mos[0] > mos[1] + 0.3 and mos[0] > mos[2]


def test_default_model_tells_noise_from_speech_distortion():
    """P.835 heads on real clips (examples/): noise lowers bak far more than sig, packet loss sig far more than bak."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    names = ["ls533_clean.flac", "ls533_noise_dishes_5dB.flac", "ls533_packetloss_10pct.wav"]
    scores = score_files([examples / n for n in names], load_model())
    assert list(scores.columns[:4]) == ["path", "mos", "sig", "bak"]
    clean, noisy, lossy = (scores.iloc[i] for i in range(3))
    assert clean.bak - noisy.bak > 0.5 + abs(clean.sig - noisy.sig)
    assert clean.sig - lossy.sig > 0.5 + abs(clean.bak - lossy.bak)
