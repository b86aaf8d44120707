"""The audio front end: every format libsndfile reads, every rate and channel count, each bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import synth_speech

from jsqa_cli import audio
from jsqa_cli.audio import AudioError, load_audio, pad_batch, window_bounds

# (file name, sample rate, channels, soundfile format, subtype, lossless?)
FORMATS = [
    ("pcm16.wav", 16_000, 1, None, "PCM_16", True),
    ("pcm24.wav", 44_100, 2, None, "PCM_24", True),
    ("float.wav", 48_000, 1, None, "FLOAT", True),
    ("u8.wav", 8_000, 1, None, "PCM_U8", True),
    ("six.flac", 48_000, 6, None, "PCM_16", True),
    ("vorbis.ogg", 44_100, 2, "OGG", "VORBIS", False),
    ("opus.ogg", 48_000, 1, "OGG", "OPUS", False),
    ("mpeg.mp3", 44_100, 1, "MP3", "MPEG_LAYER_III", False),
    ("narrow.flac", 8_000, 2, None, "PCM_16", True),
]


@pytest.mark.parametrize("name,sr,channels,fmt,subtype,lossless", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_format_rate_and_channel_count_loads_as_16k_mono(make_audio, name, sr, channels, fmt, subtype, lossless):
    path = make_audio(name, seconds=1.0, sr=sr, channels=channels, subtype=subtype, format=fmt)
    wav, info = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert info.sample_rate == sr and info.channels == channels and info.path == str(path)
    assert info.duration_s == pytest.approx(1.0, abs=0.08)  # lossy codecs pad a little
    assert len(wav) == pytest.approx(16_000 * info.duration_s, abs=2)
    assert np.isfinite(wav).all() and 0.05 < np.abs(wav).max() < 1.0
    if lossless:  # same signal as resampling the channel mean of the source ourselves
        src = synth_speech(1.0, sr)
        mean_gain = np.mean([0.9**c for c in range(channels)])
        expected = audio.resample(src * mean_gain, sr)
        tol = 0.02 if subtype == "PCM_U8" else 1e-3
        assert np.max(np.abs(wav - expected)) < tol
    assert info.warnings == []


def test_channel_option_picks_one_channel(make_audio):
    path = make_audio("stereo.wav", channels=2, subtype="FLOAT")
    left, _ = load_audio(path, channel=0)
    right, _ = load_audio(path, channel=1)
    mean, _ = load_audio(path)
    np.testing.assert_allclose(right, 0.9 * left, atol=1e-6)
    np.testing.assert_allclose(mean, 0.95 * left, atol=1e-6)
    with pytest.raises(AudioError, match="channel 2 requested but the file has 2"):
        load_audio(path, channel=2)


def test_partial_read(make_audio):
    path = make_audio("long.wav", seconds=3.0, subtype="FLOAT")
    full, _ = load_audio(path)
    part, info = load_audio(path, start_s=1.0, duration_s=0.5)
    assert len(part) == 8000 and info.duration_s == pytest.approx(3.0)
    np.testing.assert_allclose(part, full[16000:24000], atol=1e-6)


@pytest.mark.parametrize(
    "case,problem",
    [
        ("garbage", "not a readable audio file"),
        ("empty", "empty file (0 bytes)"),
        ("directory", "is a directory"),
        ("missing", "no such file"),
        ("text", "not a readable audio file"),
        ("zero_frames", "no audio samples"),
    ],
)
def test_bad_inputs_raise_one_line_errors_naming_the_file(tmp_path, case, problem):
    path = tmp_path / f"{case}.wav"
    if case == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "directory":
        path.mkdir()
    elif case == "text":
        path = tmp_path / "notes.txt"
        path.write_text("not audio\n")
    elif case == "zero_frames":
        sf.write(str(path), np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    msg = str(err.value)
    assert problem in msg and str(path) in msg and "\n" not in msg


@pytest.mark.parametrize(
    "case,warning",
    [
        ("short", "short (0.20 s < 1 s)"),
        ("silent", "silent"),
        ("near_silent", "near-silent"),
        ("clipped", "clipped"),
        ("nan", "non-finite samples (100 set to 0)"),
    ],
)
def test_content_problems_are_warnings_not_errors(make_audio, case, warning):
    x = synth_speech(1.0)
    if case == "short":
        x = synth_speech(0.2)
    elif case == "silent":
        x = np.zeros(16_000, dtype=np.float32)
    elif case == "near_silent":
        x = x * 1e-4
    elif case == "clipped":
        x = np.clip(x * 10, -1, 1)
    elif case == "nan":
        x = x.copy()
        x[100:200] = np.nan
    path = make_audio(f"{case}.wav", data=x, subtype="FLOAT")
    wav, info = load_audio(path)
    assert any(warning in w for w in info.warnings), info.warnings
    assert np.isfinite(wav).all()


def test_resampler_kernels_are_reused_per_rate():
    a = audio._resampler(44_100, 16_000)
    assert audio._resampler(44_100, 16_000) is a
    assert audio._resampler(48_000, 16_000) is not a


def test_window_bounds_cover_the_file():
    sr = 16_000
    assert window_bounds(5 * sr) == [(0, 5 * sr)]  # short: one window of its own length
    assert window_bounds(8 * sr) == [(0, 8 * sr)]
    b = window_bounds(21 * sr)
    assert b == [(0, 8 * sr), (4 * sr, 12 * sr), (8 * sr, 16 * sr), (12 * sr, 20 * sr), (13 * sr, 21 * sr)]
    assert all(e - s == 8 * sr for s, e in b)
    assert window_bounds(10, window_s=2, hop_s=1, sample_rate=4) == [(0, 8), (2, 10)]


def test_pad_batch_and_rms():
    batch, lengths = pad_batch([np.ones(3, np.float32), np.ones(5, np.float32)])
    assert batch.shape == (2, 5) and lengths.tolist() == [3, 5]
    assert batch[0, 3:].abs().sum() == 0 and torch.all(batch[1] == 1)
    assert audio.rms_db(np.full(10, 0.1)) == pytest.approx(-20.0)
    assert audio.rms_db(np.zeros(10)) == float("-inf")


# ------------------------------------------------------------------------------------ honest input checks


def test_truncated_wav_warns_and_keeps_what_is_there(make_audio, tmp_path):
    whole = make_audio("whole.wav", seconds=3.0, subtype="PCM_16").read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[: 44 + 2 * 24_000])  # the header still promises 3 s
    wav, info = load_audio(cut)
    assert len(wav) == 24_000 and info.duration_s == pytest.approx(1.5)
    assert info.warnings[0] == "truncated (the file holds 1.50 s; its header promises 3.00 s)"
    assert not any("truncated" in w for w in load_audio(tmp_path / "whole.wav")[1].warnings)


def test_garbage_after_a_header_is_not_a_silent_3_ms_clip(make_audio, tmp_path):
    whole = make_audio("whole.wav", seconds=3.0, subtype="PCM_16").read_bytes()
    bad = tmp_path / "bad.wav"
    bad.write_bytes(whole[:44] + np.random.default_rng(0).bytes(101))
    _, info = load_audio(bad)
    assert info.warnings[0].startswith("truncated (the file holds 0.00 s; its header promises 3.00 s)")


def test_flac_that_stops_decoding_warns_truncated(make_audio, tmp_path):
    whole = make_audio("whole.flac", seconds=12.0).read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole[: len(whole) // 2])
    wav, info = load_audio(cut)
    assert info.warnings[0].startswith("truncated (flac decoder lost sync at ")
    assert info.warnings[0].endswith("; the header promises 12.00 s)")
    # the block that failed part-way is read again in small steps: nearly half the file is kept
    assert 5 * 16_000 < len(wav) < 6.5 * 16_000 and info.duration_s == pytest.approx(len(wav) / 16_000)


def test_nothing_decodable_is_an_error(make_audio, tmp_path):
    whole = make_audio("whole.flac", seconds=3.0).read_bytes()
    bad = tmp_path / "bad.flac"
    bad.write_bytes(whole[:200])  # the header and no frame
    with pytest.raises(AudioError) as err:
        load_audio(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_permission_denied_is_named(make_audio, monkeypatch):
    import errno

    path = make_audio("locked.wav")
    assert audio.read_problem(path, PermissionError(errno.EACCES, "Permission denied")) == "permission denied"
    assert audio.read_problem(path, OSError(errno.EPERM, "Operation not permitted")) == "permission denied"
    assert audio.read_problem(path, sf.LibsndfileError(2, "System error.")).startswith("not a readable audio file")

    def refuse(*args, **kwargs):  # what open() does to a file without read permission (root is never refused)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    with monkeypatch.context() as m:
        m.setattr(audio, "open", refuse, raising=False)
        with pytest.raises(AudioError, match="locked.wav: permission denied$"):
            load_audio(path)


def test_unreadable_file_says_permission_denied(make_audio):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every file: the mapping is tested above")
    path = make_audio("locked.wav")
    path.chmod(0)
    with pytest.raises(AudioError, match="locked.wav: permission denied$"):
        load_audio(path)


# ------------------------------------------------------------------------------------------- block reading


@pytest.mark.parametrize("orig_sr", [44_100, 48_000, 22_050, 8_000, 16_000])
def test_block_resampling_matches_whole_file_resampling(orig_sr):
    x = synth_speech(3.3, orig_sr, seed=1) + 0.05 * np.random.default_rng(0).standard_normal(int(3.3 * orig_sr))
    x = x.astype(np.float32)
    whole = audio.resample(x, orig_sr)
    for block, piece in ((1_000, 777), (4_410, 10_000), (65_536, 333)):
        r = audio.BlockResampler(orig_sr, block=block)
        out = [r.push(x[i : i + piece]) for i in range(0, len(x), piece)] + [r.finish()]
        got = np.concatenate(out)
        assert got.shape == whole.shape
        np.testing.assert_allclose(got, whole, atol=1e-6)


def test_stream_blocks_join_to_the_whole_file(make_audio):
    path = make_audio("long.wav", seconds=10.0, sr=44_100, channels=3, subtype="FLOAT")
    data, sr = sf.read(str(path), dtype="float32")
    expected = audio.resample(data.mean(axis=1), sr)
    stream = audio.AudioStream(path, block_s=1.5)
    blocks = list(stream)
    assert len(blocks) >= 6 and max(len(b) for b in blocks) <= 1.6 * 16_000  # read a block at a time
    np.testing.assert_allclose(np.concatenate(blocks), expected, atol=1e-6)
    assert stream.info.duration_s == pytest.approx(10.0) and stream.info.channels == 3 and stream.info.warnings == []
