"""training/teachers.py: teacher labels for the recipe (DistillMOS, DNSMOS), resumable; skipped without the
`teachers` extra."""

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import teachers  # noqa: E402


def test_unknown_teacher_is_one_line_error():
    with pytest.raises(ValueError, match="unknown teacher 'pesq'"):
        teachers.load_teachers(["pesq"])


@pytest.mark.slow
def _clean_and_noisy(tmp_path):
    """A real clean LibriSpeech clip (examples/) and the same with white noise at about 0 dB SNR."""
    wav, sr = sf.read(REPO / "examples" / "ls533_clean.flac", dtype="float32")
    clean, noisy = tmp_path / "clean.wav", tmp_path / "noisy.flac"
    sf.write(clean, wav, sr)
    noise = np.random.default_rng(0).standard_normal(len(wav)) * np.sqrt(np.mean(wav**2))
    sf.write(noisy, np.clip(wav + noise, -1, 1), sr)
    return clean, noisy


def test_dnsmos_ranks_noise_below_clean_and_resumes(tmp_path):
    pytest.importorskip("speechmos")
    pytest.importorskip("onnxruntime")
    clean, noisy = _clean_and_noisy(tmp_path)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEjunk")
    out = tmp_path / "labels.csv"
    assert teachers.label_files([clean, noisy, broken], out, ["dnsmos"]) == 3
    import pandas as pd

    df = pd.read_csv(out).set_index("path")
    assert df.loc[str(noisy), "dnsmos_bak"] < df.loc[str(clean), "dnsmos_bak"]
    assert df.loc[str(broken), "error"].startswith(str(broken))
    assert teachers.label_files([clean, noisy, broken], out, ["dnsmos"]) == 0  # all done: nothing rescored
    with pytest.raises(ValueError, match="other teachers"):
        teachers.label_files([clean], out, ["distillmos"])


@pytest.mark.slow
def test_distillmos_scores_noise_below_clean(tmp_path):
    pytest.importorskip("distillmos")
    clean, noisy = _clean_and_noisy(tmp_path)
    out = tmp_path / "labels.csv"
    teachers.label_files([tmp_path], out, ["distillmos"])  # a folder: both files
    import pandas as pd

    df = pd.read_csv(out).set_index("path")
    assert 1.0 <= df.loc[str(noisy), "distillmos"] < df.loc[str(clean), "distillmos"] <= 5.0


def test_distillmos_embeddings_round_trip_for_distillation(tmp_path):
    """--embeddings: DistillMOS's pooled 200-d representation per file, read back as finetune --distill's file."""
    pytest.importorskip("distillmos")
    from jsqa_cli.labels import load_teacher_embeddings, save_teacher_embeddings

    clean, noisy = _clean_and_noisy(tmp_path)
    out = tmp_path / "labels.csv"
    with pytest.raises(ValueError, match="add distillmos"):
        teachers.label_files([clean], out, ["dnsmos"], embeddings=True)
    assert teachers.label_files([clean, noisy], out, ["distillmos"], embeddings=True) == 2
    paths, array = teachers.read_embeddings(out)
    assert paths == [str(clean), str(noisy)] and array.shape == (2, 200) and np.isfinite(array).all()
    assert not np.allclose(array[0], array[1])  # the noise moves the representation
    saved = save_teacher_embeddings(tmp_path / "emb.safetensors", paths, array)
    back_paths, back = load_teacher_embeddings(saved)
    assert np.allclose(back, array) and [Path(p).name for p in back_paths] == ["clean.wav", "noisy.flac"]
