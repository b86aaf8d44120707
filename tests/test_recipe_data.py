"""The recipe's data side: source splits, impairments, the simulated MOS corpus and its label, quality checks,
examples. Runs on a tiny generated data tree (no shared data, no network)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import synth_speech

from jsqa_cli.model import build_model, load_model

TRAINING = Path(__file__).resolve().parents[1] / "training"
sys.path.insert(0, str(TRAINING))

import codec_probe  # noqa: E402
import impairments as imp  # noqa: E402
import multilingual_voices  # noqa: E402
import prepare_sources  # noqa: E402
import quality_checks  # noqa: E402
import simulate_mos  # noqa: E402

try:
    import pesq  # noqa: F401

    HAVE_PESQ = True
except ImportError:  # pragma: no cover
    HAVE_PESQ = False
needs_pesq = pytest.mark.skipif(not HAVE_PESQ, reason="pesq not installed")

SR = 16_000


def _wave(seconds, seed, f0=140.0):
    return synth_speech(seconds, SR, seed=seed, f0=f0, level=0.3)


@pytest.fixture(scope="module")
def recipe_data_root(tmp_path_factory):
    """A miniature shared-data tree: LibriSpeech-style speakers, AN4, one LJSpeech file, noise folders
    (including the excluded non-commercial one), RIRs and a NOIZEUS-style eval folder."""
    root = tmp_path_factory.mktemp("shared") / "data"
    rng = np.random.default_rng(0)
    for k, spk in enumerate(["11", "22", "33", "44", "55", "66", "77", "88", "99", "111"]):
        for u in range(2):
            p = root / f"speech/librispeech/train-clean-100/{spk}/100/{spk}-100-000{u}.flac"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, _wave(4.5, 10 * k + u, f0=100 + 15 * k), SR)
    for j, spk in enumerate(["mabc", "fxyz", "mqrs"]):
        p = root / f"speech/an4/an1-{spk}-b.flac"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, _wave(1.5, 50 + j), SR)
    (root / "speech/ljspeech").mkdir(parents=True)
    sf.write(root / "speech/ljspeech/LJ001-0001.flac", _wave(3.0, 5, f0=210), SR)
    ivr = root / "speech/ivr_allison_en"  # an IVR prompt set: prompts plus a silence, a beep and a muted prompt
    ivr.mkdir(parents=True)
    sf.write(ivr / "hello.flac", _wave(2.5, 6, f0=190), SR)
    sf.write(ivr / "silence_2.flac", np.zeros(2 * SR, np.float32), SR)
    sf.write(ivr / "beep.flac", 0.3 * np.sin(2 * np.pi * 1000 * np.arange(SR // 4) / SR), SR)
    sf.write(ivr / "muted.flac", 1e-4 * _wave(2.0, 7), SR)
    for folder, names in {
        "ambient_blanket": ["city", "rain", "pink-noise"],
        "speech_commands": ["pink_noise", "tap"],
        "speechbrain": ["noise1", "noise2", "noise3"],
        "nonspeech100_nc": ["n1", "n2"],
    }.items():
        for name in names:
            p = root / f"noise/{folder}/{name}.flac"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, (0.1 * rng.standard_normal(SR * 3)).astype(np.float32), SR)
    (root / "rir/speechbrain").mkdir(parents=True)
    for i in range(4):
        sf.write(root / f"rir/speechbrain/rir{i + 1}.flac", imp.synthetic_rir(0.3, np.random.default_rng(i)), SR)
    for noise in ("car", "babble"):
        for snr in (0, 15):
            p = root / f"eval/noizeus_noisy/{noise}_{snr}dB/sp01_{noise}_sn{snr}.flac"
            p.parent.mkdir(parents=True, exist_ok=True)
            x = _wave(2.0, 3)[::2]
            sf.write(p, x + 10 ** (-snr / 20) * 0.1 * rng.standard_normal(len(x)).astype(np.float32), 8000)
    return root


@pytest.fixture(scope="module")
def recipe_sources(recipe_data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("sources")
    prepare_sources.main(["--data-root", str(recipe_data_root), "--out", str(out), "--synth-sentences", "0"])
    return out


# ------------------------------------------------------------------------------------------------ sources


def test_sources_are_disjoint_and_permissive(recipe_sources):
    speech = {s: pd.read_csv(recipe_sources / f"speech_{s}.csv") for s in ("train", "val", "test")}
    noise = {s: pd.read_csv(recipe_sources / f"noise_{s}.csv") for s in ("train", "val", "test")}
    assert {"path", "corpus", "speaker", "kind", "duration_s", "sample_rate", "licence"} <= set(speech["train"].columns)
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not set(speech[a].speaker) & set(speech[b].speaker)
        assert not set(noise[a].path) & set(noise[b].path)
    everything = pd.concat(noise.values())
    assert not everything.path.str.contains("nonspeech100_nc").any()
    assert everything.name.str.contains("pink").sum() == 2 and set(noise["train"].name) >= {"pink-noise", "pink_noise"}
    assert set(speech["train"].corpus) >= {"librispeech", "ljspeech", "ivr_allison_en"}
    names = {Path(p).stem for p in pd.concat(speech.values()).path}
    assert "hello" in names and not names & {"silence_2", "beep", "muted"}  # non-speech files are left out
    assert all(len(speech[s]) for s in speech)  # every split has speech
    # the same seed gives the same split; the .txt lists match the CSVs
    summary = json.loads((recipe_sources / "sources.json").read_text())
    assert summary["splits"]["train"]["speech_files"] == len(speech["train"])
    assert (recipe_sources / "speech_val.txt").read_text().split() == speech["val"].path.tolist()


def test_split_keys_stable_and_complete():
    keys = [f"spk{i}" for i in range(50)]
    a = prepare_sources.split_keys(keys, seed=3)
    assert a == prepare_sources.split_keys(list(reversed(keys)), seed=3)
    assert sorted(pd.Series(a).value_counts().to_dict().items()) == [("test", 5), ("train", 40), ("val", 5)]
    assert a != prepare_sources.split_keys(keys, seed=4)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_synthetic_voices_render(tmp_path):
    df = prepare_sources.synthetic_speech(tmp_path / "synth", 3, seed=0, workers=1)
    assert len(df) == 3 and (df.kind == "synthetic").all()
    x, sr = sf.read(df.path[0])
    assert sr == SR and len(x) > SR // 2


def test_multilingual_jobs_split_by_language():
    jobs = multilingual_voices.render_jobs(Path("/x"), per_language=3, seed=0)
    assert jobs == multilingual_voices.render_jobs(Path("/x"), per_language=3, seed=0)
    languages = {j["voice"].split("+")[0] for j in jobs}
    assert languages == set(multilingual_voices.SENTENCES) and "en" not in languages and len(jobs) == 3 * len(languages)
    assert {j["text"] for j in jobs if j["voice"].startswith("it+")} == set(multilingual_voices.SENTENCES["it"][:3])
    held_out = {lang for lang, split in multilingual_voices.LANGUAGE_SPLIT.items() if split != "train"}
    assert "it" in held_out and held_out < languages


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_multilingual_voices_make_a_sources_folder(recipe_sources, tmp_path):
    out = tmp_path / "multi"
    summary = multilingual_voices.main(
        ["--sources", str(recipe_sources), "--out", str(out), "--per-language", "1", "--workers", "1"]
    )
    assert summary["splits"]["test"]["languages"] == ["it", "pl"] and summary["splits"]["val"]["languages"] == ["nl"]
    train = pd.read_csv(out / "speech_train.csv")
    assert len(train) == len(multilingual_voices.SENTENCES) - 3 and not {"it", "pl", "nl"} & set(train.language)
    assert (train.kind == "synthetic").all() and (out / "noise_train.csv").read_text() == (
        recipe_sources / "noise_train.csv"
    ).read_text()
    x, sr = sf.read(train.path[0])
    assert sr == SR and len(x) > SR // 2


# ------------------------------------------------------------------------------------------------ impairments


@pytest.mark.parametrize("name,level", [("mp3", 0.93), ("opus", 0.97), ("vorbis", 0.8), ("gsm", None), ("ulaw", None)])
def test_codecs_round_trip_aligned(name, level):
    x = _wave(2.0, 1)
    y = imp.codec(x, name, level)
    assert y.shape == x.shape and y.dtype == np.float32
    # delay removed: the decoded signal lines up with the input (no lag left)
    corr = [np.dot(x[2000:-2000], np.roll(y, k)[2000:-2000]) for k in range(-40, 41)]
    assert int(np.argmax(corr)) - 40 == 0


def test_align_undoes_delay():
    x = _wave(1.0, 2)
    delayed = np.concatenate([np.zeros(777, np.float32), x])
    assert np.allclose(imp.align(x, delayed), x, atol=1e-6)


def test_packet_loss_modes():
    x = _wave(3.0, 4) + 0.05
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    removed, rate = imp.packet_loss(x, 0.2, "remove", rng(), frame_ms=20)
    assert 0.1 < rate < 0.3 and len(removed) < len(x)
    zero, _ = imp.packet_loss(x, 0.2, "zero", rng(), frame_ms=20)
    repeat, _ = imp.packet_loss(x, 0.2, "repeat", rng(), frame_ms=20)
    assert len(zero) == len(repeat) == len(x)
    assert np.mean(np.abs(zero) < 1e-7) > 0.1 and np.mean(np.abs(repeat) < 1e-7) < 0.01


def test_levels_snr_clip_band():
    x = _wave(2.0, 5)
    assert imp.active_level_db(imp.set_level(x, -30)) == pytest.approx(-30, abs=0.01)
    noise = np.random.default_rng(0).standard_normal(len(x)).astype(np.float32)
    y = imp.mix_snr(x, noise, 10.0)
    n = y - x
    assert imp.active_level_db(x) - 10 * np.log10(np.mean(n.astype(np.float64) ** 2)) == pytest.approx(10, abs=0.01)
    c = imp.clip(x, 12.0)
    assert imp.active_level_db(c) == pytest.approx(imp.active_level_db(x), abs=0.01)
    assert np.mean(np.abs(c) >= 0.99 * np.max(np.abs(c))) > 0.01
    lp = imp.band_limit(x, "lowpass", 1000)
    spec = np.abs(np.fft.rfft(lp))
    assert spec[len(spec) // 2 :].sum() < 0.01 * spec.sum()


@pytest.mark.parametrize("kind", imp.SUPPRESSORS)
def test_noise_suppressor_removes_noise_and_the_stronger_dulls_speech_more(kind):
    x = imp.set_level(_wave(3.0, 6), -26.0)
    noise = np.random.default_rng(1).standard_normal(len(x)).astype(np.float32)
    y = imp.mix_snr(x, noise, 5.0)
    n = y - x
    assert np.allclose(imp.apply_mask(y, np.ones_like(imp.suppression_mask(y, kind, 1.0, -10))), y, atol=1e-6)

    def through(over, floor_db):  # (noise left, dB; speech error, dB) with the noisy clip's mask
        mask = imp.suppression_mask(y, kind, over, floor_db)
        assert mask.min() >= 10 ** (floor_db / 20) - 1e-12 and mask.max() <= 1.0
        speech, rest = imp.apply_mask(x, mask), imp.apply_mask(n, mask)
        assert np.allclose(imp.apply_mask(y, mask), speech + rest, atol=1e-5)  # linear: the parts add up
        db = lambda z: 10 * np.log10(np.mean(np.asarray(z, np.float64) ** 2))  # noqa: E731
        return db(rest) - db(n), db(speech - x) - db(x)

    mild, strong = through(1.0, -10), through(3.0, -30)
    assert mild[0] < -3 and strong[0] < mild[0] - 3  # noise removed, more by the stronger
    assert strong[1] > mild[1]  # and more of the speech lost with it
    with pytest.raises(ValueError, match="unknown suppressor"):
        imp.suppression_mask(y, "magic", 1.0, -10)


# ------------------------------------------------------------------------------------------------ the label


def test_label_calibration():
    sm = simulate_mos
    assert sm.calibrate(4.64, False) == pytest.approx(sm.MOS_MAX) and sm.calibrate(1.04, False) == 1.0
    assert sm.calibrate(1.5, True) > sm.calibrate(1.5, False) + 0.5  # noise is scored more kindly than raw PESQ
    for m in (1.2, 2.5, 3.7, 4.4):
        assert sm.mos_from_r(sm.r_from_mos(m)) == pytest.approx(m, abs=1e-3)
    clean = sm.label(4.64, 4.64, False, None, None, -26.0)
    assert clean == pytest.approx(sm.MOS_MAX, abs=0.01)
    # PESQ barely moves for 5 % concealed loss; the label does, and more so without concealment
    concealed = sm.label(4.3, 4.64, False, (5.0, "repeat", 1.0), None, -26.0)
    gaps = sm.label(4.3, 4.64, False, (5.0, "zero", 1.0), None, -26.0)
    assert gaps < concealed < clean - 0.3
    assert sm.label(None, 4.64, False, (20.0, "remove", 2.0), None, -26.0) < 2.0
    assert sm.label(4.5, 4.64, False, None, (-10.0, 200.0), -26.0) < sm.label(
        4.5, 4.64, False, None, (-30.0, 200.0), -26.0
    )
    assert sm.label(4.64, 4.64, False, None, None, -50.0) < clean - 1.0  # far too quiet


def test_voice_shift_and_spectral_tilt():
    t = np.arange(SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    deeper = imp.voice_shift(x, 0.8)
    assert len(deeper) == pytest.approx(SR / 0.8, abs=2)
    spectrum = np.abs(np.fft.rfft(deeper))
    assert np.fft.rfftfreq(len(deeper), 1 / SR)[spectrum.argmax()] == pytest.approx(160, abs=2)
    assert imp.voice_shift(x, 1.0) is x
    noise = np.random.default_rng(0).standard_normal(SR * 2).astype(np.float32)
    dark = imp.spectral_tilt(noise, -2.0)

    def band_db(y, lo, hi):
        f = np.fft.rfftfreq(len(y), 1 / SR)
        return 10 * np.log10(np.mean(np.abs(np.fft.rfft(y))[(f >= lo) & (f < hi)] ** 2))

    # -2 dB/octave: 250 Hz is 2 octaves below the 1 kHz pivot (+4 dB), 4 kHz two above (-4 dB)
    assert band_db(dark, 240, 260) - band_db(noise, 240, 260) == pytest.approx(4.0, abs=0.6)
    assert band_db(dark, 3900, 4100) - band_db(noise, 3900, 4100) == pytest.approx(-4.0, abs=0.4)
    assert band_db(imp.spectral_tilt(noise, 3.0), 7000, 8000) - band_db(noise, 7000, 8000) <= 9.0 + 0.3


def _clean_draw(sources, out, share_option):
    """Three clean training clips, every reference given ``share_option`` (e.g. --timbre-share) at share 1."""
    simulate_mos.main(
        [
            "--sources",
            str(sources),
            "--out",
            str(out),
            "--num-files",
            "3",
            "0",
            "0",
            "--workers",
            "1",
            "--max-factor",
            "1",
            "--seed",
            "2",
            share_option,
            "1",
            "--clean-share",
            "1",
        ]
    )
    return pd.read_csv(out / "train.csv")


@needs_pesq
def test_timbre_varied_references_keep_clean_labels(recipe_sources, tmp_path):
    df = _clean_draw(recipe_sources, tmp_path / "mos", "--timbre-share")
    assert df.detail.str.startswith("voice:x").all() and (df.condition == "clean").all()
    assert (df.mos == simulate_mos.MOS_MAX).all()  # measured against the varied reference: still clean


def test_trim_pauses_cuts_at_the_speech():
    tone = (0.3 * np.sin(2 * np.pi * 300 * np.arange(SR) / SR)).astype(np.float32)
    x = np.concatenate([np.zeros(SR // 2, np.float32), 1e-4 * tone[:4000], tone, np.zeros(SR // 3, np.float32)])
    cut = imp.trim_pauses(x)
    assert len(cut) == pytest.approx(SR, abs=2 * 320) and np.abs(cut[:320]).max() > 0.1  # starts on the tone
    assert np.abs(cut[-320:]).max() > 0.1
    assert len(imp.trim_pauses(x, range_db=90)) == pytest.approx(SR + 4000, abs=2 * 320)  # the faint lead-in counts


@needs_pesq
def test_tight_references_have_no_pause_at_either_end(recipe_sources, tmp_path):
    out = tmp_path / "mos"
    df = _clean_draw(recipe_sources, out, "--tight-share")
    assert (df.condition == "clean").all() and (df.mos == simulate_mos.MOS_MAX).all()
    for path in df.path:
        x, _ = sf.read(out / path, dtype="float32")
        frames = 10 * np.log10(np.mean(x[: len(x) // 320 * 320].reshape(-1, 320) ** 2, axis=1) + 1e-20)
        assert frames[0] > frames.max() - 36 and frames[-1] > frames.max() - 36, path


def test_codec_probe_tells_coded_clips_without_their_reference():
    frontend = build_model("tiny", flatness_bands=8).encoder.frontend
    clips = [synth_speech(1.0, seed=i, f0=90 + 8 * i) for i in range(24)]
    rng = np.random.default_rng(0)

    def code(x):  # noise under the harmonics: what flatness shows and a band's mean level barely does
        return (x + 0.1 * rng.standard_normal(len(x))).astype(np.float32)

    acc = codec_probe.probe(clips[:16], clips[16:], code, frontend, lam=1.0)
    assert set(acc) == {"log-mel", "flatness", "both"} and all(0 <= a <= 1 for a in acc.values())
    assert acc["flatness"] >= 0.9


def test_family_weights_option():
    w = simulate_mos.parse_family_weights("codec=0.5, band=0")
    assert w[simulate_mos.FAMILIES.index("codec")] == 0.5 and w[simulate_mos.FAMILIES.index("band")] == 0
    assert w[0] == simulate_mos.FAMILY_WEIGHTS[0]  # families not named keep their default
    for bad in ("codek=0.2", "codec", "codec=much", "codec=-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="codec"):
            simulate_mos.parse_family_weights(bad)


@needs_pesq
def test_family_weights_pick_the_impairments(recipe_sources, tmp_path):
    out = tmp_path / "mos"
    only_clip = ",".join(f"{f}={int(f == 'clip')}" for f in simulate_mos.FAMILIES)
    summary = simulate_mos.main(
        [
            "--sources",
            str(recipe_sources),
            "--out",
            str(out),
            "--num-files",
            "3",
            "0",
            "0",
            "--workers",
            "1",
            "--max-factor",
            "1",
            "--clean-share",
            "0",
            "--family-weights",
            only_clip,
        ]
    )
    df = pd.read_csv(out / "train.csv")
    assert len(df) and df.condition.str.fullmatch(r"clip-\w+").all()  # one family with non-zero weight: k = 1
    assert summary["settings"]["family_weights"][simulate_mos.FAMILIES.index("clip")] == 1


@needs_pesq
def test_simulate_mos_corpus(recipe_sources, tmp_path):
    out = tmp_path / "mos"
    summary = simulate_mos.main(
        [
            "--sources",
            str(recipe_sources),
            "--out",
            str(out),
            "--num-files",
            "4",
            "2",
            "0",
            "--workers",
            "1",
            "--max-factor",
            "1",
            "--seed",
            "1",
        ]
    )
    assert summary["splits"]["train"]["files"] == 4 and "test" not in summary["splits"]
    df = pd.read_csv(out / "train.csv")
    assert list(df.columns[:5]) == ["path", "mos", "condition", "pesq_raw", "pesq_mid"] and "source" in df
    assert df.mos.between(1.0, simulate_mos.MOS_MAX).all() and df.pesq_raw.between(1.0, 4.65).all()
    for p in df.path:
        info = sf.info(str(out / p))
        assert info.samplerate == SR and 3.9 < info.duration < 8.1
    val = pd.read_csv(out / "val.csv")
    assert len(val) == 2 and not set(val.path) & set(df.path)
    # the clean reference is a training-split file, never a val/test one
    train_speech = pd.read_csv(recipe_sources / "speech_train.csv").path
    assert all(any(s.endswith(src) for s in train_speech) for src in df.source)


@needs_pesq
def test_a_killed_draw_resumes_to_the_same_clips(recipe_sources, tmp_path, monkeypatch):
    """--resume after a kill in the second batch: the same CSV and the same audio as an uninterrupted draw; the
    journal is gone once the draw is complete, and a draw of other settings does not take it up."""
    argv = ["--sources", str(recipe_sources), "--num-files", "12", "0", "0", "--workers", "1", "--max-factor", "1"]
    whole = tmp_path / "whole"
    simulate_mos.main([*argv, "--out", str(whole)])
    assert not (whole / simulate_mos.JOURNAL).exists()

    out, calls, label_bin = tmp_path / "killed", [0], simulate_mos.label_bin

    def dies_in_the_second_batch(mos):
        calls[0] += 1
        if calls[0] > 10:
            raise KeyboardInterrupt
        return label_bin(mos)

    monkeypatch.setattr(simulate_mos, "label_bin", dies_in_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        simulate_mos.main([*argv, "--out", str(out)])
    monkeypatch.setattr(simulate_mos, "label_bin", label_bin)
    settings = json.loads((out / simulate_mos.JOURNAL).read_text().splitlines()[0])["settings"]
    state = simulate_mos.read_journal(out, settings)
    assert state["train"]["drawn"] == 8 and not state["train"]["done"]  # the first batch of 8 candidates
    assert simulate_mos.read_journal(out, {**settings, "seed": 1}) == {}  # other settings: start afresh

    simulate_mos.main([*argv, "--out", str(out), "--resume"])
    a, b = pd.read_csv(whole / "train.csv"), pd.read_csv(out / "train.csv")
    pd.testing.assert_frame_equal(a, b)
    assert all((whole / p).read_bytes() == (out / p).read_bytes() for p in a.path)
    assert not (out / simulate_mos.JOURNAL).exists()


@needs_pesq
def test_versions_share_one_reference(recipe_sources, tmp_path):
    """--versions 3: groups of the clean reference and two degraded copies, kept whole, each labelled against it."""
    out = tmp_path / "mos"
    simulate_mos.main(
        [
            "--sources",
            str(recipe_sources),
            "--out",
            str(out),
            "--num-files",
            "5",
            "0",
            "0",
            "--workers",
            "1",
            "--max-factor",
            "0",
            "--seed",
            "4",
            "--versions",
            "3",
            "--clean-share",
            "0",
        ]
    )
    df = pd.read_csv(out / "train.csv")
    assert len(df) == 6 and list(df.columns)[-1] == "group"  # whole groups until at least 5 clips
    for _, g in df.groupby("group", sort=False):
        assert len(g) == 3 and g.source.nunique() == 1
        assert g.path.str.endswith(("_v0.flac", "_v1.flac", "_v2.flac")).all()
        assert g.condition.iloc[0] == "clean" and g.mos.iloc[0] == simulate_mos.MOS_MAX
        assert (g.condition.iloc[1:] != "clean").all()
        kept = g[~g.condition.str.contains("remove")]  # packet loss that removes audio shortens a clip
        assert {round(sf.info(str(out / p)).duration, 2) for p in kept.path} == {round(g.duration_s.iloc[0], 2)}
    with pytest.raises(SystemExit):
        simulate_mos.main(["--sources", str(recipe_sources), "--out", str(out), "--versions", "0"])


@needs_pesq
def test_candidate_pesq_and_codec_paths(recipe_sources):
    """One candidate per family group, including every codec path, labelled by PESQ."""
    simulate_mos._init_worker(
        dict(sources=str(recipe_sources), seed=0, synthetic_share=0.0, clean_share=0.0, data_root="")
    )
    src = simulate_mos.Sources(recipe_sources, "train", 0.0)
    rng = np.random.default_rng(0)
    ref = imp.set_level(src.speech(rng, 4.0)[0], -26.0)
    d = simulate_mos.degrade(ref, np.random.default_rng(1), src, ["codec"])
    assert d["parts"][0].startswith("codec-") and len(d["deg"]) == len(ref)
    p_clean, p_codec = simulate_mos._pesq(ref, ref), simulate_mos._pesq(ref, imp.codec(ref, "mp3", imp.MP3_LEVELS[8]))
    assert p_clean > 4.5 and p_codec < p_clean - 0.3
    noisy = simulate_mos._pesq(ref, imp.mix_snr(ref, imp.colored_noise("white", len(ref), rng), 0.0))
    assert noisy < 2.0
    clips = simulate_mos.make_candidate(("train", 3))
    assert clips is not None and len(clips) == 1
    c = clips[0]
    assert 1.0 <= c["mos"] <= simulate_mos.MOS_MAX and c["flac"][:4] == b"fLaC"


# ------------------------------------------------------------------------------------------------ checks, examples


def test_quality_checks_with_tiny_model(tiny_model_dir, recipe_sources, recipe_data_root, tmp_path):
    out, js = tmp_path / "qc.md", tmp_path / "qc.json"
    report = quality_checks.main(
        [
            str(tiny_model_dir),
            "--sources",
            str(recipe_sources),
            "--utterances",
            "2",
            "--seconds",
            "3",
            "--noizeus",
            str(recipe_data_root / "eval/noizeus_noisy"),
            "--out",
            str(out),
            "--json",
            str(js),
            "--multilingual",
            str(tmp_path / "none"),
        ]
    )
    assert report["clean_by_language"] == []  # no multilingual voices: no table
    names = [r["ladder"] for r in report["ladders"]]
    assert {"clipping", "mp3", "opus", "packet_loss:zero", "packet_loss:repeat", "lowpass", "noise:white"} <= set(names)
    for r in report["ladders"]:
        assert r["levels"][0] == "clean" and len(r["mean_scores"]) == len(r["levels"])
        assert all(1.0 <= m <= 5.0 for m in r["mean_scores"])
        assert r["passed"] == (r["rho"] >= 0.9)
    nz = report["noizeus"]
    assert nz["files"] == 4 and set(nz["mean_scores"]) == {"car", "babble"} and nz["snrs"] == [0, 15]
    clean = report["clean_by_source"]
    test_speech = pd.read_csv(recipe_sources / "speech_test.csv")
    assert {c["source"] for c in clean} == set(test_speech[test_speech.duration_s >= 2.0].corpus)
    for c in clean:
        assert 1.0 <= c["min"] <= c["mean"] <= 5.0 and c["files"] >= 1 and c["sd"] >= 0
        has_long = (test_speech[test_speech.corpus == c["source"]].duration_s >= 4.0).any()
        assert (c["crop_sd"] >= 0) if has_long else c["crop_sd"] is None  # steadiness needs 4 s recordings
        assert c["passed"] is None if c["kind"] == "synthetic" else c["passed"] == (c["mean"] >= 3.5)
    text = out.read_text()
    assert "| mp3 |" in text and "NOIZEUS" in text and "Clean held-out speech by source" in text
    assert any(c["crop_sd"] is not None for c in clean) and "within-recording sd" in text
    assert json.loads(js.read_text())["passed"] == report["passed"]
    assert report["passed"] == (
        all(r["passed"] for r in report["ladders"]) and nz["passed"] and all(c["passed"] is not False for c in clean)
    )


def test_quality_checks_clean_speech_by_language(tiny_model_dir, recipe_sources, tmp_path):
    multi = tmp_path / "multi"  # multilingual_voices.py's layout, without espeak-ng: two languages, two splits
    multi.mkdir()
    for split, lang, n in (("train", "de", 3), ("test", "it", 2)):
        rows = []
        for i in range(n):
            path = multi / f"{lang}_{i}.flac"
            sf.write(path, _wave(2.0, 20 + i), SR)
            rows.append(
                dict(
                    path=str(path),
                    corpus="synthetic_espeak-ng_multilingual",
                    speaker=f"espeak-ng:{lang}+m1",
                    kind="synthetic",
                    duration_s=2.0,
                    sample_rate=SR,
                    licence="generated",
                    language=lang,
                )
            )
        pd.DataFrame(rows).to_csv(multi / f"speech_{split}.csv", index=False)
    model = load_model(str(tiny_model_dir))
    rows = quality_checks.clean_by_language(
        model, multi, recipe_sources, per_language=2, seconds=3.0, seed=0, batch_size=4
    )
    assert [(r["language"], r["split"], r["files"]) for r in rows] == [("de", "train", 2), ("it", "test", 2)]
    assert all(1.0 <= r["mean"] <= 5.0 and r["sd"] >= 0 for r in rows)
    text = quality_checks.markdown(
        dict(
            model="tiny", model_arg="tiny", utterances=0, seconds=3.0, ladders=[], passed=False, clean_by_language=rows
        )
    )
    assert "## Clean synthetic speech by language" in text and "| it | test | 2 |" in text


@needs_pesq
def test_quality_checks_reference_labels_fall_along_ladders(recipe_sources, tiny_model_dir):
    """The yardstick: the corpus label of each level, computed against the clean utterance, falls with MP3
    bitrate and low-pass cutoff (so a model that does not follow is the model's fault, not the ladder's)."""
    utterances, _ = quality_checks.test_utterances(recipe_sources, 1, 3.0, 0)
    defs = quality_checks.ladders(recipe_sources, 0, [])
    model = load_model(tiny_model_dir)
    for r in quality_checks.run_ladders(model, utterances, {k: defs[k] for k in ("mp3", "lowpass")}, 8, reference=True):
        labels = r["reference_labels"]
        assert labels[0] == pytest.approx(simulate_mos.MOS_MAX, abs=0.01)
        assert all(a > b for a, b in zip(labels, labels[1:]))


def test_quality_checks_ladder_bar_counts_one_swap_of_five_as_rho_0_9(monkeypatch):
    """Spearman rho of one adjacent swap among 5 levels is exactly 0.9 (0.8999... in floating point): it passes
    the >= 0.9 bar, as its report says; two swaps (0.7) do not."""
    swaps = {"one": [4.10, 4.13, 4.08, 3.98, 2.93], "two": [4.10, 4.15, 4.11, 4.03, 2.96]}
    monkeypatch.setattr(quality_checks, "score_waveforms", lambda model, waves, batch_size: np.array(swaps[waves[0]]))
    defs = {name: [(str(k), lambda x, i, name=name: name) for k in range(5)] for name in swaps}
    rows = {r["ladder"]: r for r in quality_checks.run_ladders(None, [np.zeros(1)], defs, 8)}
    assert rows["one"]["rho"] == 0.9 and rows["one"]["passed"]
    assert rows["two"]["rho"] == 0.7 and not rows["two"]["passed"]
    text = quality_checks.markdown(
        dict(model="m", model_arg="m", utterances=1, seconds=3.0, passed=False, ladders=list(rows.values()))
    )
    assert (
        "Out of order (a level scoring at least as high as the better one before it): one: 1 over 0 (4.130 "
        "against 4.100); two: 1 over 0 (4.150 against 4.100)." in text
    )


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "speech/librispeech").is_dir(), reason="shared data not present")
def test_make_examples(tmp_path):
    import make_examples

    written = make_examples.main(["--data-root", str(SHARED), "--out", str(tmp_path)])
    assert 8 <= len(written) <= 12 and sum(w["bytes"] for w in written) < 1.5e6
    assert {Path(w["file"]).suffix for w in written} >= {".flac", ".wav", ".mp3", ".ogg"}
    readme = (tmp_path / "README.md").read_text()
    assert "CC BY 4.0" in readme and "Panayotov" in readme
    from jsqa_cli.audio import load_audio

    for w in written:
        x, info = load_audio(tmp_path / w["file"])
        assert 3.0 <= info.duration_s <= 5.0 and len(x) > 0


def test_bundle_card_summary_reads_the_provenance(tmp_path):
    import bundle_model

    enc = tmp_path / "encoder"
    enc.mkdir()
    (enc / "config.json").write_text(
        json.dumps({"metadata": {"steps": 1200, "batch_size": 64, "pairing": "cross-source", "negatives": "jnd-aware"}})
    )
    meta = {
        "training": {"preset": "small", "steps": 7000, "global_batch_size": 16},
        "best_step": 6500,
        "data": {"train_files": 3000},
        "init": {"kind": "pretrained", "model": str(enc)},
    }
    text = bundle_model.training_summary(meta, "fine-tuned on 2 CPU cores")
    assert text == (
        "`small` preset; encoder pretrained on JND pairs (1200 steps × 64 cross-source pairs, jnd-aware "
        "negatives); fine-tuned 7000 steps × 16 crops on 3000 simulated clips (best validation step "
        "6500); fine-tuned on 2 CPU cores"
    )
    scratch = bundle_model.training_summary({**meta, "init": {"kind": "scratch"}}, "")
    assert "trained from scratch" in scratch and not scratch.endswith("; ")
    first = tmp_path / "first"  # a second cycle, continued from the model above
    first.mkdir()
    (first / "config.json").write_text(json.dumps({"metadata": meta}))
    more = {
        "training": {"preset": "small", "steps": 6000, "global_batch_size": 16, "crop_s": [2.0, 6.0]},
        "best_step": 5500,
        "data": {"train_files": 9000},
        "init": {"kind": "pretrained", "model": str(first)},
    }
    assert bundle_model.training_summary(more, "") == (
        "`small` preset; encoder pretrained on JND pairs (1200 steps × 64 cross-source pairs, jnd-aware negatives); "
        "fine-tuned 7000 steps × 16 crops on 3000 simulated clips (best validation step 6500); fine-tuned 6000 "
        "steps × 16 crops of 2-6 s on 9000 simulated clips (best validation step 5500)"
    )
    part = {"steps": 6000, "global_batch_size": 16, "crop_s": [2.0, 6.0], "train_files": 9000}
    soup = {
        "training": more["training"],
        "init": more["init"],
        "averaged_from": [{**part, "best_step": 5500}, {**part, "best_step": 4000}],
    }
    assert bundle_model.training_summary(soup, "").endswith(
        "; then 2 runs from there, weights averaged: fine-tuned 6000 steps × 16 crops of 2-6 s on 9000 simulated "
        "clips (best validation step 5500) | fine-tuned 6000 steps × 16 crops of 2-6 s on 9000 simulated clips "
        "(best validation step 4000)"
    )
    averaged = tmp_path / "averaged"  # a third cycle, continued from the averaged model: both averages are told
    averaged.mkdir()
    (averaged / "config.json").write_text(json.dumps({"metadata": soup}))
    third = {
        "training": {"preset": "small", "steps": 3000, "global_batch_size": 16, "crop_s": [4.0, 6.0]},
        "best_step": 1500,
        "data": {"train_files": 11400},
        "init": {"kind": "pretrained", "model": str(averaged)},
    }
    text = bundle_model.training_summary(third, "")
    assert text.count("weights averaged") == 1 and text.count("best validation step 4000") == 1
    assert text.endswith(
        "(best validation step 4000); fine-tuned 3000 steps × 16 crops of 4-6 s on 11400 "
        "simulated clips (best validation step 1500)"
    )
    loop = tmp_path / "loop"  # a model whose provenance names itself (bundled, then continued) ends the chain
    loop.mkdir()
    (loop / "config.json").write_text(
        json.dumps({"metadata": {**third, "init": {"kind": "pretrained", "model": str(loop)}}})
    )
    assert (
        bundle_model.training_summary({**third, "init": {"kind": "pretrained", "model": str(loop)}}, "").count(
            "fine-tuned 3000 steps"
        )
        == 2
    )
    after = {**third, "init": {"kind": "pretrained", "model": "jsqa-small", "previous_training": "`small` preset; X"}}
    assert bundle_model.training_summary(after, "").startswith(
        "`small` preset; continued from the bundled model before it (`small` preset; X); fine-tuned 3000 steps"
    )
    wide = tmp_path / "wide"  # the shipped model's history: flatness bands added to the third cycle, then a fourth
    wide.mkdir()
    (wide / "config.json").write_text(json.dumps({"metadata": {**third, "flatness_added": {"bands": 16}}}))
    fourth = {**third, "best_step": 1000, "init": {"kind": "pretrained", "model": str(wide)}}
    assert bundle_model.training_summary(fourth, "").endswith(
        "(best validation step 1500); then 16 spectral-flatness input bands added (zero weights); fine-tuned 3000 "
        "steps × 16 crops of 4-6 s on 11400 simulated clips (best validation step 1000)"
    )
    # what each run ran on, as its provenance recorded it: told once per kind of run, the caller's note after
    gpu = tmp_path / "gpu-encoder"
    gpu.mkdir()
    (gpu / "config.json").write_text(json.dumps({"metadata": {"hardware": "NVIDIA H200"}}))
    on_cpu = {**meta, "training": {**meta["training"], "hardware": "CPU, 2 cores"}}
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "config.json").write_text(
        json.dumps({"metadata": {**on_cpu, "init": {"kind": "pretrained", "model": str(gpu)}}})
    )
    again = {**on_cpu, "init": {"kind": "pretrained", "model": str(tuned)}}
    assert bundle_model.training_summary(again, "a note").endswith(
        "(best validation step 6500); encoder pretrained on NVIDIA H200, fine-tuned on CPU, 2 cores; a note"
    )
    (gpu / "config.json").write_text(json.dumps({"metadata": {"hardware": "CPU, 2 cores"}}))
    assert bundle_model.training_summary(again, "").endswith("(best validation step 6500); trained on CPU, 2 cores")
    assert bundle_model.training_summary(on_cpu, "").endswith("6500); fine-tuned on CPU, 2 cores")


def test_bundle_keeps_only_its_models_metrics_and_names_each_test_set(tmp_path):
    import bundle_model

    rows = [
        {"dataset": d, "level": "file", "model": m, "n": 4, "pcc": 0.5}
        for d in ("mos/test", "mos-multi/test", "all")
        for m in ("scratch", "jsqa")
    ]
    doc = {
        "models": [{"label": "scratch", "name": str(tmp_path / "s")}, {"label": "jsqa", "name": str(tmp_path / "j")}],
        "metrics": rows,
    }
    (tmp_path / "m.json").write_text(json.dumps(doc))
    own = bundle_model._own_metrics(tmp_path / "m.json", tmp_path / "j")
    assert [m["label"] for m in own["models"]] == ["jsqa"] and {r["model"] for r in own["metrics"]} == {"jsqa"}
    assert [r["dataset"] for r in own["metrics"]] == [
        "jsqa-simulated-mos-test",
        "jsqa-simulated-mos-multi-test",
        "jsqa-simulated-all",
    ]
    doc["metrics"] = [r for r in rows if r["dataset"] == "mos/test"]  # one test set: the name it always had
    (tmp_path / "m.json").write_text(json.dumps(doc))
    assert {r["dataset"] for r in bundle_model._own_metrics(tmp_path / "m.json", tmp_path / "j")["metrics"]} == {
        "jsqa-simulated-mos-test"
    }
    with pytest.raises(SystemExit, match="no results for"):
        bundle_model._own_metrics(tmp_path / "m.json", tmp_path / "other")


@needs_pesq
def test_a_noise_suppressor_raises_the_snr_and_its_speech_track_carries_the_distortion(recipe_sources):
    simulate_mos._init_worker(
        dict(sources=str(recipe_sources), seed=0, synthetic_share=0.0, clean_share=0.0, data_root="")
    )
    src = simulate_mos.Sources(recipe_sources, "train", 0.0)
    ref = imp.set_level(src.speech(np.random.default_rng(0), 4.0)[0], -26.0)
    noisy = simulate_mos.degrade(ref, np.random.default_rng(2), src, ["noise"])
    both = simulate_mos.degrade(ref, np.random.default_rng(2), src, ["enhance", "noise"])  # noise comes first
    assert both["parts"][0].startswith("noise-") and both["parts"][1].startswith("enhance-")
    assert both["detail"][0] == noisy["detail"][0]  # the same noise at the same SNR, then the suppressor
    assert both["snr_db"] > noisy["snr_db"] + 1
    assert simulate_mos._pesq(ref, both["speech"]) < simulate_mos._pesq(ref, noisy["speech"]) - 0.05
    alone = simulate_mos.degrade(ref, np.random.default_rng(2), src, ["enhance"])  # on clean speech: distortion only
    assert alone["snr_db"] is None and alone["speech"] is alone["mid"] and not np.allclose(alone["mid"], ref)


@needs_pesq
def test_p835_facts_of_the_simulation(recipe_sources, tmp_path):
    """sig_sim labels the chain without its added noise: the MOS itself when there is no noise, the clean
    maximum when noise is all there is; snr_db is the noise's SNR, empty without noise."""

    def draw(family: str):
        weights = ",".join(f"{f}={int(f == family)}" for f in simulate_mos.FAMILIES)
        args = ["--sources", str(recipe_sources), "--out", str(tmp_path / family), "--num-files", "4", "0", "0"]
        simulate_mos.main(args + ["--workers", "1", "--max-factor", "1", "--family-weights", weights])
        return pd.read_csv(tmp_path / family / "train.csv")

    clipped = draw("clip")
    assert clipped.snr_db.isna().all() and (clipped.sig_sim == clipped.mos).all()
    assert (clipped.pesq_speech == clipped.pesq_mid).all()
    noisy = draw("noise")
    assert noisy.snr_db.between(-5, 40).all()
    assert (noisy.sig_sim >= simulate_mos.MOS_MAX - 0.01).all() and (noisy.mos < noisy.sig_sim).all()
