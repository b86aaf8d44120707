"""JND pairs: the mixing function, the manifest make_pairs writes, the on-the-fly dataset, the CLI."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from jsqa_cli import pairs as P
from jsqa_cli.audio import rms_db
from jsqa_cli.cli import app


def _mk(jnd_sources, tmp_path, name="pairs", **kw):
    args = dict(num_pairs=40, seconds=1.0, seed=3, val_fraction=0.25)
    args.update(kw)
    return P.make_pairs([jnd_sources / "speech"], [jnd_sources / "noise"], tmp_path / name, **args)


@pytest.fixture(scope="module")
def built(jnd_sources, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pairs")
    summary = _mk(jnd_sources, tmp, "cross", pairing="cross-source")
    df, _ = P.read_manifest(tmp / "cross")
    return tmp, summary, df


# ---------------------------------------------------------------------------------------------- mix_at_snr


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.3, 20.0, 35.0])
def test_mix_at_snr_hits_the_target_snr_and_level(snr):
    rng = np.random.default_rng(1)
    speech, noise = rng.standard_normal(16_000) * 0.1, rng.uniform(-1, 1, 16_000) * 0.3
    mix, s, n = P.mix_at_snr(speech, noise, snr, speech_level_db=-26.0, return_parts=True)
    assert mix.shape == (16_000,) and mix.dtype == np.float32
    assert abs(float(P.measured_snr(s, n)[0]) - snr) < 0.05
    assert abs(rms_db(s) - (-26.0)) < 0.05
    np.testing.assert_allclose(mix, s + n, atol=1e-6)


def test_mix_at_snr_members_share_level_and_clipping_gain():
    rng = np.random.default_rng(2)
    speech = rng.standard_normal((2, 8000)) * np.array([[0.01], [0.5]])  # very different source levels
    noise = rng.standard_normal(8000)
    snrs = np.array([-5.0, -3.0])
    mix, s, n = P.mix_at_snr(speech, noise, snrs, speech_level_db=-3.0, return_parts=True)  # loud: would clip
    assert mix.shape == (2, 8000)
    assert float(np.abs(mix).max()) <= P.MAX_PEAK + 1e-6
    np.testing.assert_allclose(P.measured_snr(s, n), snrs, atol=0.05)
    assert abs(rms_db(s[0]) - rms_db(s[1])) < 0.01  # one gain for both members: the level stays shared
    quiet = P.mix_at_snr(speech, noise, snrs, speech_level_db=-30.0)
    assert float(np.abs(quiet).max()) < P.MAX_PEAK  # no scaling when nothing clips


def test_mix_at_snr_rejects_silence_and_length_mismatch():
    with pytest.raises(ValueError, match="noise is digital silence"):
        P.mix_at_snr(np.ones(100), np.zeros(100), 5.0)
    with pytest.raises(ValueError, match="speech is digital silence"):
        P.mix_at_snr(np.zeros(100), np.ones(100), 5.0)
    with pytest.raises(ValueError, match="lengths differ"):
        P.mix_at_snr(np.ones(100), np.ones(90), 5.0)


def test_draw_snrs_and_hard_negative_snr_respect_the_jnd():
    rng = np.random.default_rng(0)
    for _ in range(500):
        a, b = P.draw_snrs(rng, -5, 20, 3.0)
        assert abs(a - b) <= 3.0 and -5 <= min(a, b) and max(a, b) <= 20
        h = P.hard_negative_snr(rng, a, 3.0, -5, 20)
        assert 6.0 <= abs(h - a) <= 9.0


# ---------------------------------------------------------------------------------------------- make_pairs


def test_manifest_content_split_and_skips(built):
    tmp, summary, df = built
    assert list(df.columns) == P.MANIFEST_COLUMNS
    assert summary["pairs"] == len(df) == 40 and summary["val_pairs"] == 10
    assert (df.snr_a - df.snr_b).abs().max() <= 3.0
    assert df[["snr_a", "snr_b"]].min().min() >= -5 and df[["snr_a", "snr_b"]].max().max() <= 20
    assert df.speech_level_db.between(*P.LEVEL_RANGE_DB).all()
    train, val = df[df.split == "train"], df[df.split == "val"]
    train_speech = set(train.speech_a) | set(train.speech_b)
    assert not train_speech & (set(val.speech_a) | set(val.speech_b)), "a speech file is in both splits"
    # the 0.6 s file is skipped (reported); the silent noise is never used (its crops are redrawn)
    assert summary["skipped"]["speech_too_short"] == 1
    assert any("short.flac" in f for f in summary["skipped"]["files"])
    assert not df.speech_a.str.endswith("short.flac").any()
    assert not df.noise_a.str.endswith("silent.wav").any()
    assert summary["hours"] == pytest.approx(40 * 2 * 1.0 / 3600, abs=1e-3)
    assert (tmp / "cross" / P.SETTINGS_NAME).is_file()


def test_cross_source_members_differ_in_content_but_share_noise_file(built):
    _, _, df = built
    assert (df.speech_a != df.speech_b).all()
    assert (df.speech_a.map(P.speaker_of) != df.speech_b.map(P.speaker_of)).all()
    assert (df.noise_a == df.noise_b).all()
    long = df[df.noise_a.str.endswith("babble.CH1.wav")]
    assert len(long) and long.noise_channel.isin([0, 1]).all()  # a channel is drawn per pair
    assert (long.noise_offset_a != long.noise_offset_b).any()
    assert (df[df.noise_a.str.endswith("hum.flac")].noise_channel == -1).all()


def test_same_source_members_share_crops(jnd_sources, tmp_path):
    _mk(jnd_sources, tmp_path, "same", pairing="same-source", num_pairs=12)
    df, settings = P.read_manifest(tmp_path / "same")
    assert settings["settings"]["pairing"] == "same-source"
    assert (df.speech_a == df.speech_b).all() and (df.speech_offset_a == df.speech_offset_b).all()
    assert (df.noise_offset_a == df.noise_offset_b).all()


def test_make_pairs_is_deterministic_whatever_the_workers(jnd_sources, tmp_path, built):
    _, _, df = built
    _mk(jnd_sources, tmp_path, "again", pairing="cross-source", workers=2)
    again, _ = P.read_manifest(tmp_path / "again")
    pd.testing.assert_frame_equal(df, again)
    _mk(jnd_sources, tmp_path, "other", pairing="cross-source", seed=4)
    other, _ = P.read_manifest(tmp_path / "other")
    assert not other.snr_a.equals(df.snr_a)


def test_write_audio_matches_on_the_fly_mixing(jnd_sources, tmp_path):
    _mk(jnd_sources, tmp_path, "audio", num_pairs=6, write_audio=True)
    df, _ = P.read_manifest(tmp_path / "audio")
    reader = P.SourceReader()
    for row in df.to_dict("records"):
        a, sr = sf.read(str(tmp_path / "audio" / row["audio_a"]), dtype="float32")
        assert sr == 16_000 and len(a) == 16_000
        expected = P.render_pair(row, reader)
        np.testing.assert_allclose(a, expected[0], atol=2e-4)  # 16-bit quantisation
    ds = P.PairDataset(df, tmp_path / "audio")
    np.testing.assert_allclose(ds[(0, 0)]["wav"].numpy(), P.render_pair(df.iloc[0], reader), atol=2e-4)


def test_make_pairs_errors_are_one_line(jnd_sources, tmp_path):
    with pytest.raises(ValueError, match="no usable speech"):
        P.make_pairs(
            [jnd_sources / "noise" / "silent.wav"], [jnd_sources / "noise"], tmp_path / "x", num_pairs=2, seconds=5.0
        )
    with pytest.raises(FileNotFoundError, match="nowhere"):
        P.make_pairs([tmp_path / "nowhere"], [jnd_sources / "noise"], tmp_path / "x", num_pairs=2)
    with pytest.raises(ValueError, match="--pairing"):
        _mk(jnd_sources, tmp_path, pairing="mixed")


def test_source_reader_seek_equals_whole_file(jnd_sources, monkeypatch):
    path = str(jnd_sources / "noise" / "babble.CH1.wav")
    whole = P.SourceReader().crop(path, 1.25, 1.0, channel=1)
    monkeypatch.setattr(P, "WHOLE_FILE_S", 1.0)  # force reading by seeking
    seek = P.SourceReader().crop(path, 1.25, 1.0, channel=1)
    np.testing.assert_array_equal(whole, seek)
    looped = P.SourceReader().crop(str(jnd_sources / "noise" / "hum.flac"), 0.2, 1.0)
    assert len(looped) == 16_000  # a 0.5 s file looped to the crop length


# ---------------------------------------------------------------------------------------------- dataset


def test_dataset_items_are_a_function_of_seed_epoch_index(built):
    tmp, _, df = built
    train = df[df.split == "train"]
    ds = P.PairDataset(train, tmp / "cross", seed=1, hard_negatives=True, redraw_snr=True)
    item = ds[(0, 3)]
    assert item["wav"].shape == (3, 16_000) and item["wav"].dtype == torch.float32
    row = train.iloc[3]
    assert item["snr"][:2].tolist() == pytest.approx([row.snr_a, row.snr_b], abs=1e-4)  # epoch 0: the manifest
    assert abs(float(item["snr"][2] - item["snr"][0])) >= 6.0
    fresh = P.PairDataset(train, tmp / "cross", seed=1, hard_negatives=True, redraw_snr=True)
    for key in [(0, 3), (2, 5)]:
        torch.testing.assert_close(ds[key]["wav"], fresh[key]["wav"])  # independent of cache and call order
    assert not torch.equal(ds[(1, 3)]["snr"], ds[(2, 3)]["snr"])  # redrawn per epoch


def test_sampler_shards_and_resumes():
    full = P.PairSampler(10, seed=0, rank=0, world_size=1)
    it = iter(full)
    seq = [next(it) for _ in range(25)]
    assert sorted(i for e, i in seq[:10]) == list(range(10)) and {e for e, _ in seq[10:20]} == {1}
    resumed = iter(P.PairSampler(10, seed=0, start=13))
    assert [next(resumed) for _ in range(12)] == seq[13:25]
    r0, r1 = iter(P.PairSampler(10, 0, 0, 2)), iter(P.PairSampler(10, 0, 1, 2))
    a, b = [next(r0) for _ in range(5)], [next(r1) for _ in range(5)]
    assert not {i for _, i in a} & {i for _, i in b}


def test_worker_errors_arrive_as_one_line(built, tmp_path):
    tmp, _, df = built
    broken = df[df.split == "train"].head(4).copy()
    broken["speech_a"] = str(tmp_path / "gone.flac")
    loader = torch.utils.data.DataLoader(
        P.PairDataset(broken), batch_size=2, num_workers=1, sampler=[(0, i) for i in range(4)]
    )
    with pytest.raises(P.PairDataError) as err:
        next(iter(loader))
    msg = str(P.PairDataError(str(err.value)))
    assert "\n" not in msg and "gone.flac" in msg and "no such file" in msg and msg.startswith("pair ")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_make_pairs(jnd_sources, tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        [
            "make-pairs",
            "--speech",
            str(jnd_sources / "speech"),
            "--noise",
            str(jnd_sources / "noise"),
            "-o",
            str(out),
            "-n",
            "8",
            "--seconds",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "8 cross-source pairs" in res.output and "Skipped: 1 speech files shorter" in res.output
    assert len(pd.read_csv(out / P.MANIFEST_NAME)) == 8
    bad = CliRunner().invoke(
        app, ["make-pairs", "--speech", str(tmp_path / "none"), "--noise", str(jnd_sources / "noise"), "-o", str(out)]
    )
    assert bad.exit_code == 2 and "none: no such file or folder" in bad.output


def test_discover_audio_reads_list_files(jnd_sources, tmp_path):
    from jsqa_cli.pairs import discover_audio

    speech = sorted((jnd_sources / "speech").rglob("*-7-0000.flac"))[:3]
    listing = tmp_path / "train.txt"
    listing.write_text(
        "# a split\n" + "\n".join(str(p) for p in speech[:2]) + "\n\n" + os.path.relpath(speech[2], tmp_path) + "\n"
    )
    assert discover_audio([listing]) == sorted(p.resolve() for p in speech)
    (tmp_path / "bad.txt").write_text("nowhere.flac\n")
    with pytest.raises(FileNotFoundError, match="bad.txt: lists 1 missing"):
        discover_audio([tmp_path / "bad.txt"])
