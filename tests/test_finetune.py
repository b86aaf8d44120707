"""Fine-tuning: NISQA and CSV readers, crops, model init (pretrained / scratch / projection head), the training loop,
early stopping, exact resume, and the `jsqa finetune` command."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from nisqa_fixture import build_nisqa_corpus, write_labelled_csv
from typer.testing import CliRunner

from jsqa_cli.audio import SAMPLE_RATE, AudioError
from jsqa_cli.cli import app
from jsqa_cli.evaluate import compute_metrics
from jsqa_cli.finetune import MOSCrops, build_finetune_model, check_files, decode_all, finetune
from jsqa_cli.hub import model_card
from jsqa_cli.labels import NISQA_TRAIN_DBS, read_labelled_csv, read_nisqa, read_nisqa_conditions
from jsqa_cli.model import add_flatness_bands, build_model, load_model, read_config, save_model
from jsqa_cli.scoring import score_files
from jsqa_cli.train import read_metrics

FAST = dict(
    preset="tiny",
    steps=4,
    batch_size=4,
    eval_every=2,
    log_every=1,
    workers=0,
    crop_s=(0.5, 1.0),
    val_batch_size=8,
    warmup_steps=1,
    quiet=True,
    device="cpu",
)


@pytest.fixture(scope="module")
def nisqa_root(tmp_path_factory):
    return build_nisqa_corpus(tmp_path_factory.mktemp("nisqa") / "NISQA_Corpus")


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """A stand-in for `jsqa pretrain`'s encoder folder: tiny, with a projection head, stage "pretrained"."""
    torch.manual_seed(1)
    return save_model(build_model("tiny"), tmp_path_factory.mktemp("pre") / "encoder", {"stage": "pretrained"})


@pytest.fixture(scope="module")
def csv_split(nisqa_root, tmp_path_factory):
    """train.csv (paths relative to its folder, a `file` column) and val.csv (absolute paths, a `con` column)."""
    train = write_labelled_csv(
        nisqa_root / "labels" / "train.csv",
        read_nisqa(nisqa_root, NISQA_TRAIN_DBS),
        relative_to=nisqa_root,
        path_column="file",
    )
    df = pd.read_csv(train)
    df["file"] = "../" + df["file"]
    df.to_csv(train, index=False)
    val = tmp_path_factory.mktemp("csv") / "val.csv"
    read_nisqa(nisqa_root, ["NISQA_VAL_SIM", "NISQA_VAL_LIVE"]).rename(columns={"condition": "con"})[
        ["path", "mos", "con"]
    ].to_csv(val, index=False)
    return train, val


def _with_p835(csv, out, drop_every: int = 3):
    """A copy of a labelled CSV with `sig` and `bak` columns that follow its MOS, every third cell of `bak` empty."""
    df = pd.read_csv(csv)
    df["sig"] = np.clip(df["mos"] + 0.5, 1, 5).round(2)
    df["bak"] = np.clip(6.0 - df["mos"], 1, 5).round(2)  # against MOS: the head must learn it, not copy MOS
    df.loc[df.index % drop_every == 0, "bak"] = np.nan
    df.to_csv(out, index=False)
    return out


@pytest.fixture(scope="module")
def p835_split(csv_split):
    train, val = csv_split
    return _with_p835(train, train.parent / "train_p835.csv"), _with_p835(val, val.parent / "val_p835.csv")


@pytest.fixture(scope="module")
def teacher_file(p835_split):
    """A stand-in teacher's 16-dim embeddings of the first 8 of the 12 training files, their paths as the labels
    give them (the CSV's folder joined to its relative paths, through ..)."""
    from jsqa_cli.labels import save_teacher_embeddings

    train, _ = p835_split
    paths = read_labelled_csv(train)["path"].tolist()[:8]
    assert "/../" in paths[0]
    emb = np.random.default_rng(0).standard_normal((len(paths), 16)).astype(np.float32)
    return save_teacher_embeddings(train.parent / "teacher.safetensors", paths, emb)


# ------------------------------------------------------------------------------------------------ readers


def test_read_nisqa_default_splits_and_columns(nisqa_root):
    df = read_nisqa(nisqa_root, NISQA_TRAIN_DBS)
    assert list(df.columns) == ["path", "mos", "condition", "db"]
    assert len(df) == 12 and set(df["db"]) == set(NISQA_TRAIN_DBS)
    assert all(p.startswith(str(nisqa_root)) and p.endswith(".wav") for p in df["path"])
    assert df["condition"][df["db"] == "NISQA_TRAIN_LIVE"].isna().all()
    assert df["condition"][df["db"] == "NISQA_TRAIN_SIM"].map(type).eq(str).all()
    assert not df["condition"].dropna().str.contains(".", regex=False).any()  # 3, not 3.0 (the column has gaps)
    assert df["mos"].between(1, 5).all()
    with_dims = read_nisqa(nisqa_root, NISQA_TRAIN_DBS, ["noi", "nope"])  # finetune --heads noi: its dimensions
    assert with_dims["noi"].between(1, 5).all() and "nope" not in with_dims


def test_read_nisqa_errors_name_the_problem(nisqa_root, tmp_path):
    with pytest.raises(ValueError, match="no database NISQA_TEST_NOPE .*has NISQA_TRAIN_SIM"):
        read_nisqa(nisqa_root, ["NISQA_TEST_NOPE"])
    with pytest.raises(FileNotFoundError, match="no such NISQA corpus folder"):
        read_nisqa(tmp_path / "missing", ["NISQA_TEST_FOR"])
    with pytest.raises(FileNotFoundError, match="not a NISQA corpus"):
        read_nisqa(tmp_path, ["NISQA_TEST_FOR"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "NISQA_corpus_file.csv").write_text("db,filepath_deg,mos\nNISQA_TEST_FOR,a.wav,good\n")
    with pytest.raises(ValueError, match=r"NISQA_corpus_file.csv: row 2: mos is not a number \('good'\)"):
        read_nisqa(bad, ["NISQA_TEST_FOR"])


def test_read_nisqa_per_db_files_without_corpus_csv(nisqa_root, tmp_path):
    import shutil

    copy = tmp_path / "corpus"
    shutil.copytree(nisqa_root / "NISQA_TEST_FOR", copy / "NISQA_TEST_FOR")
    df = read_nisqa(copy, ["NISQA_TEST_FOR"])
    assert len(df) == 6 and df["path"].map(lambda p: p.startswith(str(copy))).all()
    cons = read_nisqa_conditions(copy, ["NISQA_TEST_FOR"])
    assert list(cons.columns) == ["db", "condition", "mos"] and len(cons) == 3
    assert read_nisqa_conditions(copy, ["NISQA_TRAIN_SIM"]) is None


def test_read_labelled_csv_resolves_relative_paths_and_aliases(tmp_path, make_audio):
    make_audio("data/a.wav")
    make_audio("data/sub/b.wav")
    csv = tmp_path / "data" / "labels.csv"
    csv.write_text("file,MOS,con\na.wav,3.5,x\nsub/b.wav,2,\n")
    df = read_labelled_csv(csv)
    assert df["path"].tolist() == [str(tmp_path / "data" / "a.wav"), str(tmp_path / "data" / "sub" / "b.wav")]
    assert df["mos"].tolist() == [3.5, 2.0]
    assert df["condition"].iloc[0] == "x" and pd.isna(df["condition"].iloc[1])
    check_files(df, "train")


def test_read_labelled_csv_errors(tmp_path):
    (tmp_path / "nomos.csv").write_text("path,score\na.wav,3\n")
    with pytest.raises(ValueError, match="nomos.csv: needs a mos column"):
        read_labelled_csv(tmp_path / "nomos.csv")
    (tmp_path / "badmos.csv").write_text("path,mos\na.wav,3\nb.wav,\n")
    with pytest.raises(ValueError, match="badmos.csv: row 3: mos is not a number"):
        read_labelled_csv(tmp_path / "badmos.csv")
    with pytest.raises(FileNotFoundError, match="nothere.csv: no such file"):
        read_labelled_csv(tmp_path / "nothere.csv")


def test_check_files_names_the_missing_and_the_broken(tmp_path, make_audio):
    ok = make_audio("ok.wav")
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    with pytest.raises(AudioError, match=r"gone\.wav: no such file \(train set, 2 files"):
        check_files(pd.DataFrame({"path": [str(ok), str(tmp_path / "gone.wav")]}), "train")
    with pytest.raises(AudioError, match=r"broken\.wav: not a readable audio file"):
        check_files(pd.DataFrame({"path": [str(tmp_path / "broken.wav")]}), "val")


# ------------------------------------------------------------------------------------------------ crops


def test_crops_are_random_in_range_reproducible_and_same_with_cache(tmp_path, make_audio):
    paths = [str(make_audio(f"f{i}.wav", seconds=s, sr=48_000, seed=i)) for i, s in enumerate((3.0, 0.6))]
    plain = MOSCrops(paths, [2.0, 4.0], crop_s=(1.0, 2.0), seed=3)
    cached = MOSCrops(paths, [2.0, 4.0], crop_s=(1.0, 2.0), cache=decode_all(paths), seed=3)
    lengths = set()
    for epoch in range(6):
        wav, target, index, partner = plain[(epoch, 0)]
        assert partner is None  # no groups: no partners
        assert SAMPLE_RATE <= len(wav) <= 2 * SAMPLE_RATE and target.tolist() == [2.0] and index == 0
        assert torch.equal(wav, cached[(epoch, 0)][0]) and torch.equal(wav, plain[(epoch, 0)][0])
        lengths.add(len(wav))
        assert len(plain[(epoch, 1)][0]) == int(0.6 * SAMPLE_RATE)  # shorter than a crop: the whole file
    assert len(lengths) > 1  # a new crop every epoch


def test_decoded_audio_packs_waves_into_blocks():
    from jsqa_cli.finetune import DecodedAudio

    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (300, 500, 250, 1500, 100)]
    cache = DecodedAudio(iter(waves), block=1000)  # 300+500 | 250 | 1500 (longer than a block) | 100
    assert len(cache) == 5 and len(cache.blocks) == 4 and cache.nbytes == 4 * 2650
    assert all(np.array_equal(cache[i], w) for i, w in enumerate(waves))
    assert [len(w) for w in cache] == [300, 500, 250, 1500, 100]  # iterable, as the validation set is read
    assert len(DecodedAudio([])) == 0


def test_16_bit_cache_is_exact_for_16_bit_files_and_takes_half_the_memory(make_audio):
    """The training cache (finetune --cache-audio) keeps int16 samples: 16-bit files at 16 kHz come back
    unchanged, resampled ones within half a 16-bit step; float32 items either way."""
    from jsqa_cli.audio import load_audio
    from jsqa_cli.finetune import DecodedAudio

    paths = [str(make_audio(f"g{i}.wav", seconds=1.0, sr=sr, seed=i)) for i, sr in enumerate((16_000, 48_000))]
    exact, rounded = (load_audio(p)[0] for p in paths)
    cache = decode_all(paths, dtype=np.int16)
    assert cache.nbytes == 2 * (len(exact) + len(rounded)) and cache[0].dtype == np.float32
    assert np.array_equal(cache[0], exact)
    assert np.abs(cache[1] - rounded).max() <= 0.5 / 32768 + 1e-9 and not np.array_equal(cache[1], rounded)
    crops, cached = MOSCrops(paths[:1], [3.0], seed=1), MOSCrops(paths[:1], [3.0], cache=cache, seed=1)
    assert torch.equal(crops[(2, 0)][0], cached[(2, 0)][0])
    assert np.array_equal(DecodedAudio([np.array([1.5, -2.0], np.float32)], dtype=np.int16)[0], [32767 / 32768, -1.0])
    with pytest.raises(ValueError, match="float32 or int16"):
        DecodedAudio([], dtype=np.float64)


def test_grouped_crops_come_with_a_partner_cropped_at_the_same_place(tmp_path, make_audio):
    """Versions of one reference (same length; here the same signal at two gains) are cropped alike; files with
    no group, or alone in theirs, have no partner; the collated batch indexes each crop and its partner."""
    import soundfile as sf

    from jsqa_cli.finetune import collate_crops

    base = make_audio("ref.wav", seconds=3.0, seed=1)
    x, sr = sf.read(base, dtype="float32")
    paths = [str(base)]
    for k, g in ((1, 0.5), (2, 0.25)):
        sf.write(tmp_path / f"v{k}.wav", x * g, sr, subtype="FLOAT")
        paths.append(str(tmp_path / f"v{k}.wav"))
    paths.append(str(make_audio("alone.wav", seconds=2.0, seed=2)))
    paths.append(str(make_audio("nogroup.wav", seconds=2.0, seed=3)))
    crops = MOSCrops(paths, [4.5, 3.0, 2.0, 4.0, 1.0], crop_s=(1.0, 1.5), seed=0, groups=["a", "a", "a", "b", pd.NA])
    partners = set()
    for epoch in range(8):
        wav, _, _, (other, other_target, other_index) = crops[(epoch, 0)]
        other_mos = float(other_target[0])
        gain = {3.0: 0.5, 2.0: 0.25}[other_mos]
        assert other_index == {3.0: 1, 2.0: 2}[other_mos]
        assert len(other) == len(wav) and torch.allclose(other, wav * gain, atol=1e-6)  # the same place
        partners.add(other_mos)
    assert partners == {3.0, 2.0}  # either other version
    assert crops[(0, 3)][3] is None and crops[(0, 4)][3] is None
    wav, lengths, targets, pairs, files = collate_crops([crops[(0, 3)], crops[(0, 1)], crops[(0, 4)]])
    assert wav.shape[0] == 4 and pairs.tolist() == [[1, 3]] and targets.shape == (4, 1)
    assert targets[1, 0] == 3.0 and targets[3, 0] in (4.5, 2.0) and files.tolist()[:3] == [3, 1, 4]
    assert files[3] in (0, 2)
    assert collate_crops([crops[(0, 4)]])[3].shape == (0, 2)


def test_rank_weight_trains_on_groups_and_needs_them(csv_split, pretrained_dir, tmp_path):
    train, val = csv_split
    df = pd.read_csv(train)
    df["group"] = [f"g{i // 3}" for i in range(len(df))]  # stand-in groups of three
    grouped = train.parent / "grouped.csv"
    df.to_csv(grouped, index=False)
    assert read_labelled_csv(grouped)["group"].iloc[0] == f"{grouped}:g0"  # groups of two CSVs never merge
    out = finetune(
        output=str(tmp_path / "rank"),
        train_csv=[str(grouped), str(train)],
        val_csv=str(val),
        init=str(pretrained_dir),
        rank_weight=1.0,
        **{**FAST, "steps": 2},
    )
    meta = read_config(out)[1]
    assert meta["training"]["rank_weight"] == 1.0 and meta["data"]["train_files"] == 2 * len(df)
    losses = [r["loss"] for r in read_metrics(out / "training") if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    with pytest.raises(ValueError, match="--rank-weight needs training files that share a `group`"):
        finetune(
            output=str(tmp_path / "nogroups"),
            train_csv=str(train),
            val_csv=str(val),
            init=str(pretrained_dir),
            rank_weight=1.0,
            **FAST,
        )


# ------------------------------------------------------------------------------------------------ init


def _encoder_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith("encoder."))


def test_init_from_pretrained_drop_and_keep(pretrained_dir):
    pre = load_model(pretrained_dir)
    drop, info = build_finetune_model(str(pretrained_dir), False)
    assert info["kind"] == "pretrained" and info["model_stage"] == "pretrained"
    assert _encoder_equal(drop, pre) and drop.projection is None and drop.config.mos_input == "embedding"
    keep, _ = build_finetune_model(str(pretrained_dir), False, projection_head=True)
    assert keep.config.mos_input == "projection" and keep.mos_head[0].in_features == keep.config.proj_dim
    assert torch.equal(keep.projection[0].weight, pre.projection[0].weight)
    wav = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 8000)).astype(np.float32) * 0.1)
    with torch.no_grad():
        out = keep.eval()(wav)
    assert out.shape == (2,) and bool(((out >= 1) & (out <= 5)).all())


def test_init_from_scratch_uses_the_same_network_with_new_weights(pretrained_dir):
    scratch, info = build_finetune_model(str(pretrained_dir), True, seed=5)
    pre = load_model(pretrained_dir)
    assert info["kind"] == "scratch" and scratch.config.d_model == pre.config.d_model
    assert not _encoder_equal(scratch, pre)
    again, _ = build_finetune_model(None, True, preset="tiny", seed=5)
    assert again.config.preset == "tiny"


def test_init_errors(tmp_path):
    with pytest.raises(ValueError, match="--init PRETRAINED .* or --from-scratch"):
        build_finetune_model(None, False)
    no_proj = save_model(build_model("tiny", projection_head=False), tmp_path / "noproj")
    with pytest.raises(ValueError, match="--projection-head needs a projection head"):
        build_finetune_model(str(no_proj), False, projection_head=True)


# ------------------------------------------------------------------------------------------------ training


def test_finetune_from_pretrained_on_nisqa(nisqa_root, pretrained_dir, tmp_path):
    out = finetune(output=str(tmp_path / "ft"), nisqa_root=str(nisqa_root), init=str(pretrained_dir), **FAST)
    cfg, meta = read_config(out)
    assert cfg.projection_head is False and cfg.preset == "tiny"
    assert meta["stage"] == "finetuned" and meta["init"]["kind"] == "pretrained"
    assert meta["init"]["model"] == str(pretrained_dir)
    assert meta["data"]["train_db"] == list(NISQA_TRAIN_DBS) and meta["data"]["train_files"] == 12
    assert meta["steps_run"] == 4 and meta["best_step"] in (2, 4) and meta["early_stopped"] is False
    assert meta["training"]["seed"] == 0 and meta["training"]["lr_head"] == 1e-3
    assert "lr_flatness" not in meta["training"]  # not set: the head's rate, and not listed
    val = meta["validation"]
    assert val["n"] == 6 and set(val) >= {"rmse", "mae", "pcc", "srcc", "condition"}
    records = read_metrics(out / "training")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "val_rmse" in r] == [2, 4]
    assert (out / "training" / "checkpoint.pt").is_file() and (out / "training" / "options.json").is_file()

    # validation is the scoring path: the saved (best) model scores the val files to the stored metrics
    model = load_model(out)
    val_df = read_nisqa(nisqa_root, ["NISQA_VAL_SIM", "NISQA_VAL_LIVE"])
    rows = score_files(val_df["path"], model, device="cpu")
    got = compute_metrics(rows["mos"], val_df["mos"])
    assert got["rmse"] == pytest.approx(val["rmse"], abs=1e-4) and got["pcc"] == pytest.approx(val["pcc"], abs=1e-3)


def test_finetune_keep_projection_head_round_trips(csv_split, pretrained_dir, tmp_path):
    train, val = csv_split
    out = finetune(
        output=str(tmp_path / "keep"),
        train_csv=str(train),
        val_csv=str(val),
        init=str(pretrained_dir),
        projection_head=True,
        **{**FAST, "steps": 2},
    )
    cfg, meta = read_config(out)
    assert cfg.projection_head and cfg.mos_input == "projection" and meta["init"]["projection_head"] is True
    rows = score_files(read_labelled_csv(val)["path"], str(out), device="cpu")
    assert rows["error"].eq("").all() and rows["mos"].between(1, 5).all()


def test_finetune_from_scratch_csv_l1_frozen_encoder(csv_split, pretrained_dir, tmp_path):
    train, val = csv_split
    out = finetune(
        output=str(tmp_path / "scratch"),
        train_csv=str(train),
        val_csv=str(val),
        init=str(pretrained_dir),
        from_scratch=True,
        loss="l1",
        freeze_encoder_steps=4,
        early_stop="rmse",
        seed=7,
        **FAST,
    )
    _, meta = read_config(out)
    assert meta["init"]["kind"] == "scratch" and meta["data"]["source"] == "csv"
    assert meta["training"]["loss"] == "l1" and meta["training"]["early_stop"] == "rmse"
    trained = load_model(out)
    start, _ = build_finetune_model(str(pretrained_dir), True, seed=7)
    assert _encoder_equal(trained, start)  # frozen for every step: only the head moved...
    assert not torch.equal(trained.mos_head[0].weight, start.mos_head[0].weight)  # ...and it did move
    assert all(r["frozen_encoder"] for r in read_metrics(out / "training") if "loss" in r)


@pytest.mark.parametrize("extra", ["flatness", "phase"])
def test_flatness_and_phase_inputs_train_at_the_head_rate(csv_split, tmp_path, extra):
    """A model given flatness or phase bands (zero weights) fine-tunes them at --lr-head, like the MOS head."""
    from jsqa_cli.model import add_phase_bands

    train, val = csv_split
    torch.manual_seed(3)
    widen = add_flatness_bands if extra == "flatness" else add_phase_bands
    start = save_model(widen(build_model("tiny", projection_head=False), 8), tmp_path / "wide", {"stage": "finetuned"})
    out = finetune(
        output=str(tmp_path / "ft"),
        train_csv=str(train),
        val_csv=str(val),
        init=str(start),
        lr=0.0,
        lr_head=1e-2,
        seed=3,
        **FAST,
    )
    trained, before = load_model(out), load_model(start)
    flat = f"encoder.stem.conv1_{extra}.weight"
    assert getattr(trained.config, f"{extra}_bands") == 8 and not before.state_dict()[flat].any()
    assert trained.state_dict()[flat].abs().max() > 1e-3  # moved at the head's rate...
    assert all(
        torch.equal(v, before.state_dict()[k])
        for k, v in trained.state_dict().items()
        if k.startswith("encoder.") and k != flat
    )  # ...while the encoder's rate (0) kept the rest


def test_lr_flatness_gives_the_flatness_input_its_own_rate(csv_split, tmp_path):
    """--lr-flatness trains the flatness input at its own rate (here alone: encoder and head at 0), is logged and
    kept in the model's metadata; a model without that input is refused in one line."""
    train, val = csv_split
    torch.manual_seed(4)
    start = save_model(
        add_flatness_bands(build_model("tiny", projection_head=False), 8), tmp_path / "wide", {"stage": "finetuned"}
    )
    out = finetune(
        output=str(tmp_path / "ft"),
        train_csv=str(train),
        val_csv=str(val),
        init=str(start),
        lr=0.0,
        lr_head=0.0,
        lr_flatness=1e-2,
        seed=4,
        **FAST,
    )
    trained, before = load_model(out), load_model(start)
    flat = "encoder.stem.conv1_flatness.weight"
    assert trained.state_dict()[flat].abs().max() > 1e-3
    assert all(torch.equal(v, before.state_dict()[k]) for k, v in trained.state_dict().items() if k != flat)
    assert all(r["lr_head"] == 0 and r["lr_flatness"] > 0 for r in read_metrics(out / "training") if "loss" in r)
    assert read_config(out)[1]["training"]["lr_flatness"] == 1e-2
    plain = save_model(build_model("tiny", projection_head=False), tmp_path / "plain", {"stage": "finetuned"})
    with pytest.raises(ValueError, match="--lr-flatness: .*plain has no flatness input"):
        finetune(
            output=str(tmp_path / "ft2"),
            train_csv=str(train),
            val_csv=str(val),
            init=str(plain),
            lr_flatness=1e-2,
            **FAST,
        )


def test_a_missing_init_model_fails_before_the_files_are_read(csv_split, tmp_path, monkeypatch):
    from jsqa_cli import finetune as ft
    from jsqa_cli.model import ModelError

    def read_nothing(*a, **k):
        raise AssertionError("the training files were read before --init was checked")

    monkeypatch.setattr(ft, "load_finetune_data", read_nothing)
    train, val = csv_split
    with pytest.raises(ModelError, match="runs/no-such-model: no such model folder"):
        finetune(
            output=str(tmp_path / "ft"),
            train_csv=str(train),
            val_csv=str(val),
            init=str(tmp_path / "runs/no-such-model"),
            **FAST,
        )


def test_cache_audio_warns_when_the_cache_would_not_fit(csv_split, tmp_path, monkeypatch):
    """--cache-audio trains from the 16-bit cache, and warns in one line (files, GiB needed and available)
    before filling more than 80 % of the available RAM; no warning where there is room or no figure."""
    import warnings

    from jsqa_cli import finetune as ft

    monkeypatch.setattr(ft, "available_memory", lambda: 10 * 2**30)
    assert ft.cache_memory_warning(3600.0, 100) is None  # 1 hour: 0.11 GiB
    msg = ft.cache_memory_warning(3600.0 * 80, 100, processes=2)  # 2 x 80 h x 115.2 MB = 2 x 8.6 GiB
    assert "100 training files need about 17.2 GiB of RAM (2 processes)" in msg and "10.0 GiB" in msg
    monkeypatch.setattr(ft, "available_memory", lambda: None)
    assert ft.cache_memory_warning(3600.0 * 80, 100) is None

    train, val = csv_split
    monkeypatch.setattr(ft, "available_memory", lambda: 1000)
    with pytest.warns(UserWarning, match=r"--cache-audio: the \d+ training files need about"):
        out = finetune(
            output=str(tmp_path / "cached"),
            train_csv=str(train),
            val_csv=str(val),
            from_scratch=True,
            cache_audio=True,
            **FAST,
        )
    assert read_config(out)[1]["best_step"] in (2, 4)
    monkeypatch.setattr(ft, "available_memory", lambda: 2**40)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        finetune(
            output=str(tmp_path / "roomy"),
            train_csv=str(train),
            val_csv=str(val),
            from_scratch=True,
            cache_audio=True,
            **FAST,
        )


def test_early_stopping_on_a_model_that_cannot_improve(csv_split, tmp_path):
    train, val = csv_split
    opts = {**FAST, "steps": 20, "eval_every": 1, "log_every": 5}
    out = finetune(
        output=str(tmp_path / "es"),
        train_csv=str(train),
        val_csv=str(val),
        from_scratch=True,
        lr=0.0,
        lr_head=0.0,
        early_stop="rmse",
        patience=2,
        **opts,
    )
    _, meta = read_config(out)
    assert meta["early_stopped"] is True and meta["steps_run"] == 3 and meta["best_step"] == 1


def _resume_matches_straight(tmp_path, common: dict) -> None:
    """Interrupted twice and resumed, a run ends with the same model (and task state) as an uninterrupted one."""
    straight = finetune(output=str(tmp_path / "straight"), **common)
    part = tmp_path / "parts"
    finetune(output=str(part), stop_after=2, **common)
    assert not (part / "config.json").exists()  # no evaluation yet: no model, a checkpoint
    with pytest.raises(ValueError, match="--resume continues it"):
        finetune(output=str(part), **common)
    finetune(output=str(part), resume=True, stop_after=2, **common)
    finetune(output=str(part), resume=True, **common)
    a, b = load_model(straight).state_dict(), load_model(part).state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_metrics(part / "training") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert read_config(part)[1]["steps_run"] == 6
    ta, tb = (
        torch.load(f / "training" / "checkpoint.pt", weights_only=True)["extra"]["task"] for f in (straight, part)
    )
    assert ta.keys() == tb.keys() and ("distill_map" in ta) == bool(common.get("distill"))
    for k, v in ta.get("distill_map", {}).items():  # --distill's map, outside the model, resumed exactly too
        assert torch.equal(v, tb["distill_map"][k])


def test_resume_continues_exactly(csv_split, tmp_path):
    train, val = csv_split
    common = dict(train_csv=str(train), val_csv=str(val), from_scratch=True, **{**FAST, "steps": 6, "eval_every": 3})
    _resume_matches_straight(tmp_path, common)


def test_finetune_option_errors(tmp_path, csv_split):
    train, val = csv_split
    with pytest.raises(ValueError, match="either --nisqa-root or --train"):
        finetune(output=str(tmp_path / "x"), from_scratch=True)
    with pytest.raises(ValueError, match="--train needs --val"):
        finetune(output=str(tmp_path / "x"), train_csv=str(train), from_scratch=True)
    with pytest.raises(ValueError, match="--loss must be mse or l1"):
        finetune(output=str(tmp_path / "x"), train_csv=str(train), val_csv=str(val), loss="huber")
    with pytest.raises(TypeError, match="unknown finetune option"):
        finetune(output=str(tmp_path / "x"), epochs=3)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        finetune(
            output=str(tmp_path / "x"), train_csv=str(train), val_csv=str(val), from_scratch=True, resume=True, **FAST
        )


def _ddp_worker(rank: int, port: int, train: str, val: str, out: str, teacher: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    finetune(
        output=out,
        train_csv=train,
        val_csv=val,
        from_scratch=True,
        freeze_encoder_steps=1,
        heads="sig,bak",
        distill=teacher,
        distill_weight=0.5,
        **{**FAST, "steps": 3, "eval_every": 2, "batch_size": 2},
    )


def test_ddp_two_gloo_ranks(p835_split, teacher_file, tmp_path):
    """2 CPU ranks: DDP rebuilt when the encoder unfreezes, validation shared out and gathered back in order; extra
    heads (a batch may hold no label of one) and the distillation map (outside the model) train under DDP too."""
    import socket

    import torch.multiprocessing as mp

    train, val = p835_split
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(port, str(train), str(val), str(out), str(teacher_file)), nprocs=2, join=True)
    _, meta = read_config(out)
    assert meta["training"]["world_size"] == 2 and meta["training"]["global_batch_size"] == 4
    assert meta["training"]["hardware"].startswith("CPU, ") and meta["training"]["hardware"].endswith(", 2 processes")
    assert meta["training"]["heads"] == ["sig", "bak"] and set(meta["validation_heads"]) == {"sig", "bak"}
    assert [r["step"] for r in read_metrics(out / "training") if "loss" in r] == [1, 2, 3]  # rank 0 only
    val_df = read_labelled_csv(val)
    rows = score_files(val_df["path"], load_model(out), device="cpu")
    assert compute_metrics(rows["mos"], val_df["mos"])["rmse"] == pytest.approx(meta["validation"]["rmse"], abs=1e-4)


# ------------------------------------------------------------------------------------------------ CLI


runner = CliRunner()


def test_cli_finetune_help_has_an_example_and_the_shared_vocabulary():
    res = runner.invoke(app, ["finetune", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "Example" in res.output and "--no-projection-head" in res.output
    for option in (
        "--steps",
        "--eval-every",
        "--log-every",
        "--checkpoint-every",
        "--lr ",
        "--lr-head",
        "--output",
        "--workers",
        "--device",
        "--resume",
        "--overwrite",
        "--stop-after",
        "--patience",
    ):
        assert option in res.output, option
    assert "--max-steps" not in res.output and "--val-every" not in res.output and "--lr-encoder" not in res.output


def test_cli_finetune_runs_and_errors_are_one_line(csv_split, tmp_path):
    train, val = csv_split
    out = tmp_path / "cli"
    args = [
        "finetune",
        "-o",
        str(out),
        "--train",
        str(train),
        "--val",
        str(val),
        "--from-scratch",
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "2",
        "--workers",
        "0",
        "--crop",
        "0.5",
        "1.0",
        "--device",
        "cpu",
        "--quiet",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert read_config(out)[1]["steps_run"] == 2
    res = runner.invoke(app, args)  # the folder holds a run now
    assert res.exit_code == 2 and "--resume continues it" in res.output and "Traceback" not in res.output
    res = runner.invoke(
        app,
        ["finetune", "-o", str(tmp_path / "y"), "--train", str(train), "--val", str(val), "--device", "cpu", "--quiet"],
    )
    assert res.exit_code == 2 and "--from-scratch" in res.output
    json.loads((out / "training" / "options.json").read_text())


def test_cli_finetune_reads_several_train_csvs_as_one_set(csv_split, tmp_path):
    train, val = csv_split
    df = read_labelled_csv(train)  # absolute paths now; each half goes to its own folder
    halves = []
    for i, part in enumerate((df.iloc[: len(df) // 2], df.iloc[len(df) // 2 :])):
        (tmp_path / f"part{i}").mkdir()
        halves.append(tmp_path / f"part{i}" / "train.csv")
        part.to_csv(halves[-1], index=False)
    out = tmp_path / "two"
    args = [
        "finetune",
        "-o",
        str(out),
        "--train",
        str(halves[0]),
        "--train",
        str(halves[1]),
        "--val",
        str(val),
        "--from-scratch",
        "--preset",
        "tiny",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--eval-every",
        "1",
        "--workers",
        "0",
        "--crop",
        "0.5",
        "1.0",
        "--device",
        "cpu",
        "--quiet",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    data = read_config(out)[1]["data"]
    assert data["train_files"] == len(df) and data["train_csv"] == [str(h) for h in halves]
    args[2] = str(tmp_path / "three")
    res = runner.invoke(app, [*args, "--train", str(tmp_path / "missing.csv")])  # a third CSV that is not there
    assert res.exit_code == 2 and "missing.csv" in res.output and "Traceback" not in res.output


def test_finetune_validates_on_several_val_csvs_as_one_set(csv_split, tmp_path):
    train, val = csv_split
    df = read_labelled_csv(val)
    halves = []
    for i, part in enumerate((df.iloc[: len(df) // 2], df.iloc[len(df) // 2 :])):
        (tmp_path / f"lang{i}").mkdir()
        halves.append(tmp_path / f"lang{i}" / "val.csv")
        part.assign(condition="clean").to_csv(halves[-1], index=False)  # the same condition name in both
    out = finetune(
        output=str(tmp_path / "m"),
        train_csv=str(train),
        val_csv=[str(h) for h in halves],
        from_scratch=True,
        **{**FAST, "steps": 1, "eval_every": 1},
    )
    meta = read_config(out)[1]
    assert meta["data"]["val_files"] == len(df) and meta["data"]["val_csv"] == [str(h) for h in halves]
    assert meta["validation"]["n"] == len(df) and meta["validation"]["condition"]["n"] == 2  # one per CSV
    card = model_card(out, "me/m").text
    assert "lang0/val.csv+lang1/val.csv (validation)" in card


def test_grad_clip_0_trains(nisqa_root, tmp_path):
    """--grad-clip 0 is off: the weights move and the validation error falls."""
    start, _ = build_finetune_model(None, True, preset="tiny", seed=0)
    out = finetune(
        output=str(tmp_path / "ft"),
        nisqa_root=str(nisqa_root),
        from_scratch=True,
        grad_clip=0.0,
        lr_head=1e-2,
        patience=0,
        **{**FAST, "steps": 8, "eval_every": 1},
    )
    trained = load_model(out).state_dict()
    assert not torch.equal(trained["mos_head.0.weight"], start.state_dict()["mos_head.0.weight"])
    assert any(not torch.equal(v, trained[k]) for k, v in start.state_dict().items() if k.startswith("encoder."))
    records = read_metrics(out / "training")
    assert all(r["grad_norm"] > 0 for r in records if "loss" in r)
    val = [r["val_rmse"] for r in records if "val_rmse" in r]
    assert len(val) == 8 and val[-1] < val[0]


def test_overwrite_starts_again(csv_split, tmp_path):
    train, val = csv_split
    common = dict(
        output=str(tmp_path / "m"),
        train_csv=str(train),
        val_csv=str(val),
        from_scratch=True,
        **{**FAST, "steps": 2, "eval_every": 1},
    )
    finetune(**common)
    finetune(**{**common, "steps": 1}, overwrite=True)
    assert read_config(tmp_path / "m")[1]["steps_run"] == 1
    assert [r["step"] for r in read_metrics(tmp_path / "m" / "training") if "loss" in r] == [1]
    with pytest.raises(ValueError, match="choose one"):
        finetune(**common, overwrite=True, resume=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grad-clip", "-1"], "--grad-clip -1.0: give a positive gradient-norm limit, or 0 for no clipping"),
        (["--steps", "0"], "--steps 0: train at least 1 step"),
        (["--log-every", "-1"], "--log-every -1: must not be negative"),
        (["--eval-every", "-2"], "--eval-every -2: must not be negative"),
        (["--checkpoint-every", "-1"], "--checkpoint-every -1: must not be negative"),
        (["--patience", "-1"], "--patience -1: must not be negative"),
        (["--stop-after", "0"], "--stop-after 0: stop after at least 1 step"),
        (["--workers", "-1"], "--workers -1"),
        (["--device", "gpu"], "--device 'gpu': choose auto, cpu, cuda or cuda:N"),
    ],
)
def test_cli_finetune_usage_mistakes_are_one_line(csv_split, tmp_path, args, message):
    train, val = csv_split
    res = runner.invoke(
        app,
        [
            "finetune",
            "-o",
            str(tmp_path / "m"),
            "--train",
            str(train),
            "--val",
            str(val),
            "--from-scratch",
            "--preset",
            "tiny",
            "-q",
            *args,
        ],
    )
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------------ extra heads


def test_extra_heads_train_on_their_columns(p835_split, pretrained_dir, tmp_path):
    """--heads sig,bak: heads added to the pretrained encoder, trained on their columns (empty cells give no loss),
    validated per head on the rows that have a label, recorded in the model's metadata. Validated on the training
    files, cropped whole, with the encoder at rate 0: the heads fit their targets better than at the start."""
    from jsqa_cli.scoring import score_waveforms

    train, _ = p835_split
    out = finetune(
        output=str(tmp_path / "p835"),
        train_csv=str(train),
        val_csv=str(train),
        init=str(pretrained_dir),
        heads="sig,bak",
        head_weight={"bak": 2.0},
        lr=0.0,
        lr_head=5e-2,
        patience=0,
        **{**FAST, "steps": 24, "eval_every": 12, "log_every": 4, "batch_size": 8, "crop_s": (3.0, 3.0)},
    )
    cfg, meta = read_config(out)
    assert cfg.extra_heads == ["sig", "bak"] and cfg.outputs == ["mos", "sig", "bak"]
    assert meta["training"]["heads"] == ["sig", "bak"] and meta["training"]["head_weight"] == {"sig": 1.0, "bak": 2.0}
    labels = read_labelled_csv(train, ["sig", "bak"])
    n, n_bak = len(labels), int(labels["bak"].notna().sum())
    assert meta["validation"]["n"] == n and "heads" not in meta["validation"]
    assert meta["validation_heads"]["sig"]["n"] == n and meta["validation_heads"]["bak"]["n"] == n_bak < n
    assert meta["data"]["head_labels"]["bak"] == {"train": n_bak, "val": n_bak}
    records = read_metrics(out / "training")
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 6 and all(np.isfinite([r["loss"], r["loss_mos"], r["loss_heads"]]).all() for r in steps)
    evals = [r for r in records if "val_sig_pcc" in r]
    assert [r["step"] for r in evals] == [12, 24] and all("val_bak_rmse" in r for r in evals)

    waves = list(decode_all(list(labels["path"])))
    start, _ = build_finetune_model(str(pretrained_dir), False, heads=["sig", "bak"])
    before = score_waveforms(start, waves, outputs=["sig", "bak"])
    for h in ("sig", "bak"):
        assert evals[-1][f"val_{h}_rmse"] < compute_metrics(before[h], labels[h])["rmse"], h
    # the saved heads (the best MOS step's) score the files to the recorded metrics: the scoring path's numbers
    after = score_waveforms(load_model(out), waves, outputs="all")
    assert set(after) == {"mos", "sig", "bak"}
    got = compute_metrics(after["bak"], labels["bak"])
    assert got["n"] == n_bak and got["rmse"] == pytest.approx(meta["validation_heads"]["bak"]["rmse"], abs=1e-4)


def test_heads_with_weight_0_leave_mos_training_exactly_as_without(p835_split, tmp_path):
    """The extra heads add their loss and nothing else: at --head-weight 0 the MOS model (encoder and MOS head) ends
    where a MOS-only run does, to float rounding (the gradient norm that clipping takes sums the heads' zero
    gradients too, a longer reduction)."""
    train, val = p835_split
    common = dict(train_csv=str(train), val_csv=str(val), from_scratch=True, **{**FAST, "steps": 3, "eval_every": 3})
    plain = load_model(finetune(output=str(tmp_path / "plain"), **common))
    heads = load_model(finetune(output=str(tmp_path / "heads"), heads=("sig", "bak"), head_weight=0.0, **common))
    assert plain.config.extra_heads == [] and heads.config.extra_heads == ["sig", "bak"]
    a, b = plain.state_dict(), heads.state_dict()
    assert set(b) - set(a) and all(k.startswith("heads.") for k in set(b) - set(a))
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)
    assert any(not torch.allclose(a[k], start, rtol=0, atol=1e-3) for k, start in _scratch_tiny().items())


def test_freeze_encoder_and_mos_adds_heads_and_leaves_the_mos_as_it_was(p835_split, pretrained_dir, tmp_path):
    """--freeze encoder,mos --heads sig,bak: only the new heads train; every other weight
    ends exactly where it started, so the model's MOS is the one it had. --freeze mos alone trains the encoder."""
    train, val = p835_split
    common = dict(train_csv=str(train), val_csv=str(val), init=str(pretrained_dir), heads="sig,bak")
    fast = {**FAST, "steps": 4, "eval_every": 2, "lr": 1e-2, "lr_head": 1e-2}
    start = build_finetune_model(str(pretrained_dir), False, heads=["sig", "bak"])[0].state_dict()
    held = load_model(finetune(output=str(tmp_path / "held"), freeze=("encoder", "mos"), **common, **fast)).state_dict()
    assert all(torch.equal(held[k], start[k]) for k in start if not k.startswith("heads."))
    assert all(not torch.equal(held[k], start[k]) for k in start if k.startswith("heads.") and k.endswith("weight"))
    meta = read_config(tmp_path / "held")[1]
    assert meta["training"]["freeze"] == ["encoder", "mos"]
    evals = [r for r in read_metrics(tmp_path / "held" / "training") if "val_heads_pcc" in r]
    assert len(evals) == 2 and meta["best_step"] == max(evals, key=lambda r: r["val_heads_pcc"])["step"]
    mos_only = load_model(finetune(output=str(tmp_path / "mos"), freeze="mos", **common, **fast)).state_dict()
    assert all(torch.equal(mos_only[k], start[k]) for k in start if k.startswith("mos_head."))
    assert any(not torch.equal(mos_only[k], start[k]) for k in start if k.startswith("encoder.transformer."))


@pytest.mark.parametrize(
    "options, message",
    [({"freeze": "decoder"}, "choose from encoder, mos"), ({"freeze": "encoder,mos"}, "leaves nothing to train")],
)
def test_freeze_mistakes_are_one_line(csv_split, tmp_path, options, message):
    train, val = csv_split
    with pytest.raises(ValueError, match=message):
        finetune(output=str(tmp_path / "m"), train_csv=str(train), val_csv=str(val), from_scratch=True, **options)


def _scratch_tiny():
    return build_finetune_model(None, True, preset="tiny")[0].state_dict()


def test_init_heads_are_kept_added_or_dropped(tmp_path):
    """--heads from a model that has some: those keep their weights, missing ones are added, unnamed ones dropped."""
    from jsqa_cli.model import add_heads

    torch.manual_seed(0)
    start = save_model(add_heads(build_model("tiny"), ["sig", "aux_x"]), tmp_path / "m", {"stage": "finetuned"})
    model, info = build_finetune_model(str(start), False, heads=["bak", "sig"])
    assert model.config.extra_heads == ["sig", "bak"] and info["dropped_heads"] == ["aux_x"]
    before = load_model(start).state_dict()
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before if k.startswith("heads.sig."))
    plain, info = build_finetune_model(str(start), False)
    assert plain.config.extra_heads == [] and info["dropped_heads"] == ["sig", "aux_x"]


def test_read_score_columns(tmp_path):
    (tmp_path / "a.csv").write_text("path,mos,aux_x,other\na.wav,3,4.5,x\nb.wav,2,,y\n")
    df = read_labelled_csv(tmp_path / "a.csv", ["aux_x", "bak"])
    assert df["aux_x"].tolist()[0] == 4.5 and np.isnan(df["aux_x"].iloc[1]) and "bak" not in df and "other" not in df
    assert list(read_labelled_csv(tmp_path / "a.csv").columns) == ["path", "mos", "condition"]  # as before
    (tmp_path / "b.csv").write_text("path,mos,sig\na.wav,3,4.5\nb.wav,2,7\n")
    with pytest.raises(ValueError, match=r"b.csv: row 3: sig is not a score from 1 to 5 \(7"):
        read_labelled_csv(tmp_path / "b.csv", ["sig"])  # a head's labels are checked against the heads' range
    (tmp_path / "c.csv").write_text("path,mos,aux_x\na.wav,3,good\n")
    with pytest.raises(ValueError, match="c.csv: row 2: aux_x is not a score from 1 to 5"):
        read_labelled_csv(tmp_path / "c.csv", ["aux_x"])


def test_head_options_are_checked(csv_split, tmp_path):
    from jsqa_cli.finetune import _check_heads, parse_head_weight

    assert parse_head_weight([]) == 1.0 and parse_head_weight(["0.5"]) == 0.5
    assert _check_heads("sig, bak", parse_head_weight(["0.5", "bak=2"])) == (("sig", "bak"), {"sig": 0.5, "bak": 2.0})
    assert _check_heads(["aux_x"], 1.0) == (("aux_x",), {"aux_x": 1.0})
    for heads, weight, message in [
        ("sig,sig", 1.0, "named twice"),
        ("mos", 1.0, "--heads mos: is a labels column with another meaning"),
        ("si-g", 1.0, "not a valid head name"),
        ("sig", {"bak": 1.0}, "--head-weight bak=...: bak is not one of --heads"),
        ("sig", -1.0, "--head-weight sig=-1.0: must be a number, 0 or more"),
        ((), 0.5, "--head-weight weighs the extra heads of --heads; there are none"),
    ]:
        with pytest.raises(ValueError, match=message):
            _check_heads(heads, weight)
    with pytest.raises(ValueError, match="--head-weight x: give a number W, or NAME=W"):
        parse_head_weight(["x"])


def test_cli_a_head_without_labels_is_one_line(csv_split, p835_split, tmp_path):
    train, val = csv_split
    args = ["finetune", "-o", str(tmp_path / "m"), "--val", str(val), "--from-scratch", "--preset", "tiny", "-q"]
    res = runner.invoke(app, [*args, "--train", str(train), "--heads", "sig,bak"])
    assert res.exit_code == 2 and "--heads sig: no training CSV has a column 'sig'" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()
    res = runner.invoke(app, [*args, "--train", str(p835_split[0]), "--heads", "sig", "--head-weight", "bak=1"])
    assert res.exit_code == 2 and "bak is not one of --heads" in res.output


# ------------------------------------------------------------------------------------------------ distillation


def test_teacher_embeddings_round_trip_and_errors(tmp_path, teacher_file, p835_split, monkeypatch):
    from safetensors.numpy import save_file

    from jsqa_cli.labels import load_teacher_embeddings, match_paths, path_key, save_teacher_embeddings

    paths, emb = load_teacher_embeddings(teacher_file)
    train = read_labelled_csv(p835_split[0])["path"].tolist()  # the same files, as the labels give them
    assert emb.shape == (8, 16) and emb.dtype == np.float32 and paths == [path_key(p) for p in train[:8]]
    assert all(os.path.isabs(p) and "/../" not in p for p in paths)  # stored absolute
    assert match_paths(train, paths).tolist() == [*range(8), -1, -1, -1, -1]
    monkeypatch.chdir(p835_split[0].parent)  # relative paths (other tools' files) are the current folder's
    relative = [os.path.relpath(p) for p in train]
    assert match_paths(relative, paths).tolist()[:8] == list(range(8))
    assert match_paths([str(tmp_path / "x" / ".." / "a.wav")], [str(tmp_path / "a.wav")]).tolist() == [0]
    with pytest.raises(ValueError, match="one embedding row per path"):
        save_teacher_embeddings(tmp_path / "t.safetensors", ["a.wav"], np.zeros((2, 4)))
    with pytest.raises(FileNotFoundError, match="nothere.safetensors: no such teacher-embeddings file"):
        load_teacher_embeddings(tmp_path / "nothere.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 32)
    with pytest.raises(ValueError, match="junk.safetensors: not a safetensors file"):
        load_teacher_embeddings(tmp_path / "junk.safetensors")
    save_file({"embeddings": np.zeros((2, 4), np.float32)}, str(tmp_path / "nopaths.safetensors"))
    with pytest.raises(ValueError, match="nopaths.safetensors: needs a JSON list of the audio paths"):
        load_teacher_embeddings(tmp_path / "nopaths.safetensors")
    save_file({"emb": np.zeros((2, 4), np.float32)}, str(tmp_path / "wrong.safetensors"), metadata={"paths": "[]"})
    with pytest.raises(
        ValueError, match="wrong.safetensors: needs an \\(N, D\\) tensor named 'embeddings' \\(has emb\\)"
    ):
        load_teacher_embeddings(tmp_path / "wrong.safetensors")


def test_distill_trains_a_map_that_stays_out_of_the_model(p835_split, teacher_file, tmp_path):
    """--distill: the map of the embedding to the teacher's space trains (its loss falls) with the model, files
    without a teacher embedding give none, and the saved model is a plain model without the map."""
    train, val = p835_split
    out = finetune(
        output=str(tmp_path / "d"),
        train_csv=str(train),
        val_csv=str(val),
        init=None,
        from_scratch=True,
        distill=str(teacher_file),
        distill_weight=1.0,
        lr_head=5e-2,
        **{**FAST, "steps": 12, "eval_every": 12, "log_every": 4, "batch_size": 8},
    )
    meta = read_config(out)[1]["training"]
    assert meta["distill"] == str(teacher_file) and meta["distill_files"] == 8 and meta["distill_dim"] == 16
    losses = [r["loss_distill"] for r in read_metrics(out / "training") if "loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    model = load_model(out)  # strict: nothing missing, nothing unexpected
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if "distill" in k]
    task = torch.load(out / "training" / "checkpoint.pt", weights_only=True)["extra"]["task"]
    assert task["distill_map"]["weight"].shape == (16, model.config.d_model)
    records = [r for r in read_metrics(out / "training") if "lr_distill" in r]
    assert records and all(r["lr_distill"] == r["lr_head"] for r in records)  # the head's rate


def test_distill_errors_are_one_line(p835_split, teacher_file, tmp_path):
    from jsqa_cli.labels import save_teacher_embeddings

    train, val = p835_split
    other = save_teacher_embeddings(tmp_path / "other.safetensors", ["elsewhere/a.wav"], np.ones((1, 4)))
    args = ["finetune", "-o", str(tmp_path / "m"), "--train", str(train), "--val", str(val), "--from-scratch", "-q"]
    res = runner.invoke(app, [*args, "--distill", str(other), "--distill-weight", "1"])
    assert res.exit_code == 2 and "none of its 1 files is a training file" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "m").exists()
    res = runner.invoke(app, [*args, "--distill", str(teacher_file)])
    assert res.exit_code == 2 and "--distill needs --distill-weight W > 0" in res.output
    res = runner.invoke(app, [*args, "--distill-weight", "0.5"])
    assert res.exit_code == 2 and "--distill-weight needs --distill" in res.output


def test_resume_with_heads_and_distill_continues_exactly(p835_split, teacher_file, tmp_path):
    train, val = p835_split
    common = dict(
        train_csv=str(train),
        val_csv=str(val),
        from_scratch=True,
        heads=("sig", "bak"),
        distill=str(teacher_file),
        distill_weight=0.5,
        **{**FAST, "steps": 6, "eval_every": 3},
    )
    _resume_matches_straight(tmp_path, common)
