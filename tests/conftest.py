"""Shared fixtures: tiny generated audio and tiny models. Helpers add fixtures here with a unique prefix."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch

os.environ.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def synth_speech(seconds: float, sr: int = 16_000, seed: int = 0, f0: float = 140.0, level: float = 0.3) -> np.ndarray:
    """Speech-like test signal: a harmonic tone with a syllable-rate envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    vib = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(vib) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)))
    x = env * x + 0.01 * rng.standard_normal(len(t))
    return (level * x / (np.max(np.abs(x)) + 1e-9)).astype(np.float32)


@pytest.fixture
def make_audio(tmp_path):
    """make_audio(name, seconds=1.0, sr=16000, channels=1, subtype=None, seed=0, data=None) -> Path."""

    def _make(name, seconds=1.0, sr=16_000, channels=1, subtype=None, seed=0, data=None, format=None):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            mono = synth_speech(seconds, sr, seed)
            data = np.stack([mono * (0.9**c) for c in range(channels)], axis=1) if channels > 1 else mono
        sf.write(str(path), data, sr, subtype=subtype, format=format)
        return path

    return _make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny untrained model folder (config.json + model.safetensors), deterministic weights."""
    from jsqa_cli.model import build_model, save_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "tiny"
    save_model(build_model("tiny"), folder, metadata={"stage": "test"})
    return folder


@pytest.fixture(scope="session")
def jnd_sources(tmp_path_factory):
    """Speech and noise folders for the JND-pair tests: 8 'speakers' in a LibriSpeech-like tree (1.5-3 s each,
    one too short for a 1 s crop), a long 2-channel noise, a short noise (looped), and a silent noise."""
    root = tmp_path_factory.mktemp("jnd_sources")
    rng = np.random.default_rng(0)
    for spk in range(8):
        for utt in range(2):
            path = root / "speech" / f"{100 + spk}" / "7" / f"{100 + spk}-7-{utt:04d}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            wav = synth_speech(1.5 + 0.1 * utt + 0.1 * spk, seed=10 * spk + utt, f0=110 + 12 * spk)
            sf.write(str(path), wav, 16_000)
    sf.write(str(root / "speech" / "short.flac"), synth_speech(0.6, seed=99), 16_000)
    (root / "noise").mkdir()
    long_noise = rng.standard_normal((16_000 * 6, 2)).astype(np.float32) * np.array([0.1, 0.05], np.float32)
    sf.write(str(root / "noise" / "babble.CH1.wav"), long_noise, 16_000)
    sf.write(str(root / "noise" / "hum.flac"), 0.1 * np.sin(np.arange(8_000) * 0.05).astype(np.float32), 16_000)
    sf.write(str(root / "noise" / "silent.wav"), np.zeros(16_000 * 2, np.float32), 16_000)
    return root
