"""Scoring library: discovery, windows → file scores, batching, errors as rows, writers, resume, shards."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import synth_speech

from jsqa_cli import scoring, writers
from jsqa_cli.audio import load_audio
from jsqa_cli.model import load_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture
def corpus(make_audio, tmp_path):
    """A small mixed folder: several formats, rates, channel counts and lengths, one broken file, one non-audio."""
    files = [
        make_audio("corpus/a.wav", seconds=1.0, seed=1),
        make_audio("corpus/b.flac", seconds=2.5, sr=48_000, channels=2, seed=2),
        make_audio("corpus/sub/c.ogg", seconds=1.2, sr=44_100, subtype="VORBIS", seed=3),
        make_audio("corpus/sub/d.wav", seconds=9.5, sr=8_000, seed=4),  # two windows
        make_audio("corpus/sub/deeper/e.WAV", seconds=0.3, seed=5),  # under MIN_DURATION_S: an error row
    ]
    (tmp_path / "corpus" / "sub" / "broken.wav").write_bytes(b"RIFF" + b"\x01" * 100)
    (tmp_path / "corpus" / "notes.txt").write_text("not audio")
    return tmp_path / "corpus", files


def test_find_audio_recurses_filters_sorts_and_dedups(corpus, tmp_path):
    root, files = corpus
    found = scoring.find_audio([root])
    names = [p.relative_to(root).as_posix() for p in found]
    assert names == ["a.wav", "b.flac", "sub/broken.wav", "sub/c.ogg", "sub/d.wav", "sub/deeper/e.WAV"]
    # named files keep their place first, then the folder's other files; repeats are dropped
    again = scoring.find_audio([files[3], root, files[0], root / "sub" / ".." / "a.wav"])
    assert again[0] == files[3] and len(again) == 6
    assert [p.name for p in scoring.find_audio([root], extensions=["flac", ".OGG"])] == ["b.flac", "c.ogg"]
    with pytest.raises(FileNotFoundError, match="nope.wav: no such file or folder"):
        scoring.find_audio([root, tmp_path / "nope.wav"])


def test_score_files_rows_in_input_order_with_errors(corpus, tiny, tmp_path):
    root, files = corpus
    paths = scoring.find_audio([root]) + [tmp_path / "missing.wav", root / "notes.txt"]
    df = scoring.score_files(paths, tiny, batch_size=3)
    assert list(df.columns) == scoring.COLUMNS and list(df["path"]) == [str(p) for p in paths]
    bad = df.set_index("path")["error"]
    assert "not a readable audio file" in bad[str(root / "sub" / "broken.wav")]
    assert bad[str(tmp_path / "missing.wav")] == "no such file"
    assert "not a readable audio file" in bad[str(root / "notes.txt")]
    ok = df[df["error"] == ""]
    assert len(ok) == 4 and ok["mos"].between(1, 5).all() and df[df["error"] != ""]["mos"].isna().all()
    row = df.set_index("path").loc[str(root / "b.flac")]
    assert (row.sample_rate, row.channels, row.segments, row.model) == (48_000, 2, 1, tiny.name)
    assert row.duration_s == pytest.approx(2.5)
    assert df.set_index("path").loc[str(root / "sub" / "d.wav"), "segments"] == 2
    short = df.set_index("path").loc[str(root / "sub" / "deeper" / "e.WAV")]
    assert short.error == "too short to score (0.30 s < 1 s)" and np.isnan(short.mos) and short.duration_s == 0.3


def test_score_waveforms_gives_the_numbers_score_files_writes(corpus, tiny):
    root, _ = corpus
    paths = [p for p in scoring.find_audio([root]) if p.name not in ("broken.wav", "e.WAV")]
    df = scoring.score_files(paths, tiny)
    waves = [load_audio(p)[0] for p in paths]
    np.testing.assert_array_equal(scoring.score_waveforms(tiny, waves), df["mos"].to_numpy())
    # and a different batching moves scores by far less than the 4 decimals written
    other = scoring.score_waveforms(tiny, waves[::-1], batch_size=1)[::-1]
    np.testing.assert_allclose(other, df["mos"].to_numpy(), atol=2e-4)


def test_windows_and_segments_of_a_long_file(make_audio, tiny):
    # Three minutes at 1 s windows, 0.5 s hop: 359 windows through batches of 16 (the one-hour path, scaled down).
    path = make_audio("long.flac", seconds=180.0, seed=7)
    wav, _ = load_audio(path)
    [(bounds, scores)] = scoring.predict_windows(tiny, [wav], window_s=1.0, hop_s=0.5)
    assert len(bounds) == len(scores) == 359 and bounds[0] == (0, 16_000) and bounds[-1][1] == len(wav)
    df = scoring.score_files([path], tiny, window_s=1.0, hop_s=0.5, segments=True)
    seg = df.attrs["segments"]
    assert list(seg.columns) == scoring.SEGMENT_COLUMNS and len(seg) == 359 and df.loc[0, "segments"] == 359
    assert seg["end_s"].iloc[-1] == pytest.approx(180.0) and (seg["end_s"] - seg["start_s"]).eq(1.0).all()
    assert df.loc[0, "mos"] == pytest.approx(float(np.mean(scores)), abs=1e-4)
    np.testing.assert_allclose(seg["mos"], scores, atol=1e-4)
    # each window's score equals scoring that stretch alone
    a, b = bounds[100]
    with torch.inference_mode():
        alone = tiny(torch.from_numpy(wav[a:b])[None]).item()
    assert alone == pytest.approx(scores[100], abs=1e-4)


def test_streamed_scores_equal_whole_file_scores(make_audio, tiny):
    # Files read in blocks (4 s) and cut into windows as the blocks arrive score as the whole file read at once,
    # resampled at once and cut afterwards did before streaming: 16 kHz, 44.1 and 48 kHz, several channels.
    import soundfile as sf

    from jsqa_cli.audio import resample, to_mono

    paths = [
        make_audio("s16.wav", seconds=21.0, seed=1, subtype="FLOAT"),
        make_audio("s44.flac", seconds=19.3, sr=44_100, channels=2, seed=2),
        make_audio("s48.wav", seconds=13.7, sr=48_000, channels=6, seed=3, subtype="PCM_24"),
        make_audio("short48.wav", seconds=1.7, sr=48_000, seed=4),
    ]
    whole = []
    for p in paths:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
        whole.append(resample(to_mono(data), sr))
    expected_windows = scoring.predict_windows(tiny, whole)
    for workers in (0, 2):
        df = scoring.score_files(paths, tiny, workers=workers, segments=True)
        assert (df["error"] == "").all() and df["segments"].tolist() == [5, 4, 3, 1]
        np.testing.assert_allclose(df["mos"], [np.mean(s) for _, s in expected_windows], atol=1e-4)
        seg = df.attrs["segments"]
        np.testing.assert_allclose(seg["mos"], np.concatenate([s for _, s in expected_windows]), atol=1e-4)
        ends = [b / 16_000 for bounds, _ in expected_windows for _, b in bounds]
        np.testing.assert_allclose(seg["end_s"], ends, atol=1e-3)


def test_windows_cut_from_blocks_are_the_windows_of_the_whole(tiny):
    from jsqa_cli.audio import window_bounds

    rng = np.random.default_rng(0)
    for n in (5, 7_999, 8_000, 8_001, 21_000, 40_000):
        wave = rng.standard_normal(n).astype(np.float32)
        cut = scoring._Windows(8_000, 3_000)
        got, start = [], 0
        for size in rng.integers(1, 9_000, size=100):
            got += cut.push(torch.from_numpy(wave[start : start + size]))
            start += size
            if start >= n:
                break
        got += cut.finish()
        assert [(a, b) for a, b, _ in got] == window_bounds(n, 1_000, 8.0, 3.0)
        for a, b, w in got:
            np.testing.assert_array_equal(w, wave[a:b])


def test_scores_do_not_depend_on_batch_size_or_neighbours(tiny):
    waves = [synth_speech(s, seed=i) for i, s in enumerate([0.4, 3.0, 12.0, 1.1, 8.0, 0.05])]
    ref = scoring.score_waveforms(tiny, waves, batch_size=16)
    for bs in (1, 2, 5):
        np.testing.assert_allclose(scoring.score_waveforms(tiny, waves, batch_size=bs), ref, atol=1e-4)
    np.testing.assert_allclose(scoring.score_waveforms(tiny, waves[2:3]), ref[2:3], atol=1e-4)


def test_model_mode_is_restored_and_bad_waves_refused(tiny_model_dir):
    model = load_model(tiny_model_dir).train()
    scoring.score_waveforms(model, [synth_speech(0.5)])
    assert model.training
    with pytest.raises(ValueError, match="non-empty 1-D"):
        scoring.score_waveforms(model, [np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match="batch size"):
        scoring.score_waveforms(model, [synth_speech(0.5)], batch_size=0)


def test_decoding_workers_give_the_same_rows(corpus, tiny):
    root, _ = corpus
    paths = scoring.find_audio([root])
    a = scoring.score_files(paths, tiny, workers=0)
    b = scoring.score_files(paths, tiny, workers=2)
    pd.testing.assert_frame_equal(a, b)


def test_score_files_accepts_a_model_folder_and_channel(make_audio, tiny_model_dir):
    path = make_audio("st.wav", channels=2, subtype="FLOAT")
    df = scoring.score_files([path, path], str(tiny_model_dir), device="cpu", channel=1)
    assert df["error"].tolist() == ["", ""] and df["mos"].nunique() == 1
    bad = scoring.score_files([path], tiny_model_dir, channel=5)
    assert "channel 5 requested" in bad.loc[0, "error"]


# ------------------------------------------------------------------------------------------- writing rows


def test_csv_and_jsonl_outputs_round_trip(corpus, tiny, tmp_path):
    root, _ = corpus
    paths = scoring.find_audio([root])
    ref = scoring.score_files(paths, tiny)
    for name in ("s.csv", "s.jsonl"):
        run = scoring.score_to_file(paths, tmp_path / name, tiny, segments_path=tmp_path / f"seg-{name}")
        assert (run.scored, run.failed, run.skipped) == (6, 2, 0)
        got = scoring.read_scores(tmp_path / name).set_index("path").loc[[str(p) for p in paths]]
        np.testing.assert_array_equal(got["mos"].to_numpy(), ref["mos"].to_numpy())
        assert got["error"].fillna("").astype(bool).sum() == 2
        seg = scoring.read_scores(tmp_path / f"seg-{name}")
        assert list(seg.columns) == scoring.SEGMENT_COLUMNS and len(seg) == 5
    first = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])
    assert list(first) == scoring.COLUMNS
    with pytest.raises(ValueError, match="already exists; pass --resume"):
        scoring.score_to_file(paths, tmp_path / "s.csv", tiny)
    with pytest.raises(ValueError, match="must end in .csv or .jsonl"):
        scoring.score_to_file(paths, tmp_path / "s.txt", tiny)


def test_resume_after_an_interrupted_run(corpus, tiny, tmp_path):
    root, _ = corpus
    paths = scoring.find_audio([root])
    out = tmp_path / "scores.csv"

    def interrupt_after_two(result, seen=[]):  # noqa: B006 - counts calls
        seen.append(result)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scoring.score_to_file(paths, out, tiny, on_result=interrupt_after_two)
    kept = pd.read_csv(out)
    assert len(kept) == 2  # rows were flushed as they finished
    with open(out, "a") as f:  # a kill mid-write leaves a torn last line
        f.write(f"{paths[-1]},3.1")
    run = scoring.score_to_file(paths, out, tiny, resume=True)
    assert run.skipped == 2 and run.scored == 4
    df = pd.read_csv(out)
    assert sorted(df["path"]) == sorted(map(str, paths)) and df["path"].is_unique
    full = scoring.score_files(paths, tiny).set_index("path")
    np.testing.assert_array_equal(df.set_index("path").loc[full.index, "mos"].to_numpy(), full["mos"].to_numpy())
    assert scoring.score_to_file(paths, out, tiny, resume=True).scored == 0


def test_writer_stdout_and_resume_checks(tmp_path):
    import io

    buf = io.StringIO()
    with writers.open_writer("-", scoring.COLUMNS, stdout=buf) as w:
        w.write({"path": "x.wav", "mos": float("nan"), "segments": 0, "error": "bad"})
    assert buf.getvalue().splitlines() == [",".join(scoring.COLUMNS), "x.wav,,,,,0,,,bad"]
    with pytest.raises(ValueError, match="--resume needs an output file"):
        writers.check_output("-", resume=True)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a scores file"):
        writers.read_done_paths(other)
    with pytest.raises(ValueError, match="does not exist"):
        writers.check_output(tmp_path / "no" / "s.csv")


def test_summarize():
    df = pd.DataFrame(
        {"mos": [2.0, 3.0, 4.0, np.nan], "duration_s": [1800, 1800, 3600, np.nan], "error": ["", "", "", "boom"]}
    )
    s = scoring.summarize(df)
    assert s == {"files": 4, "failed": 1, "mean_mos": 3.0, "median_mos": 3.0, "audio_h": 2.0}


# ------------------------------------------------------------------------------------------------- shards


def test_two_shards_merge_into_the_single_run(corpus, tiny, tmp_path):
    root, _ = corpus
    paths = scoring.find_audio([root])
    parts = [scoring.shard_paths(paths, k, 2) for k in range(2)]
    assert sorted(map(str, parts[0] + parts[1])) == sorted(map(str, paths)) and not set(parts[0]) & set(parts[1])
    out = tmp_path / "scores.csv"
    scoring.score_to_file(paths, out, tiny, shard=(0, 2), segments_path=tmp_path / "seg.csv")
    with pytest.raises(ValueError, match="missing part"):
        scoring.merge_parts(out)
    scoring.score_to_file(paths, out, tiny, shard=(1, 2), segments_path=tmp_path / "seg.csv")
    assert (tmp_path / "scores.part-00001-of-00002.csv").is_file()
    merged = scoring.merge_parts(out)
    assert list(merged["path"]) == sorted(map(str, paths))
    single = scoring.score_files(paths, tiny).set_index("path")
    got = pd.read_csv(out).set_index("path").loc[single.index]
    np.testing.assert_allclose(got["mos"], single["mos"], atol=2e-4)
    assert len(scoring.merge_parts(tmp_path / "seg.csv")) == 5


def test_shard_parsing_and_names(monkeypatch):
    assert scoring.parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="expected K/N"):
            scoring.parse_shard(bad)
    assert scoring.part_path("out/s.jsonl", 2, 4).as_posix() == "out/s.part-00002-of-00004.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert scoring.torchrun_shard() == (2, 3)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert scoring.torchrun_shard() is None


def test_jsonl_parts_merge_exactly(corpus, tiny, tmp_path):
    root, _ = corpus
    paths = scoring.find_audio([root])
    out = tmp_path / "s.jsonl"
    for k in range(2):
        scoring.score_to_file(paths, out, tiny, shard=(k, 2))
    merged = scoring.merge_parts(out)
    lines = out.read_text().splitlines()
    part_lines = [ln for p in sorted(tmp_path.glob("s.part-*.jsonl")) for ln in p.read_text().splitlines()]
    assert sorted(lines) == sorted(part_lines) and len(merged) == 6  # values copied as written (ints stay ints)
    assert [json.loads(ln)["path"] for ln in lines] == sorted(map(str, paths))


def test_garbage_after_a_header_gets_an_error_row_not_a_score(make_audio, tiny, tmp_path):
    whole = make_audio("whole.wav", seconds=3.0, subtype="PCM_16").read_bytes()
    (tmp_path / "bad.wav").write_bytes(whole[:44] + np.random.default_rng(0).bytes(101))
    row = scoring.score_files([tmp_path / "bad.wav"], tiny).iloc[0]
    assert row.error == "too short to score (0.00 s < 1 s)" and np.isnan(row.mos)
    assert row.warnings == "truncated (the file holds 0.00 s; its header promises 3.00 s)"
