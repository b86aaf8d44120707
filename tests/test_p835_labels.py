"""training/p835_labels.py: P.835 sig/bak labels from the simulation's facts fused with DNSMOS."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import p835_labels  # noqa: E402


def _corpus_and_teachers(n=40, seed=0):
    rng = np.random.default_rng(seed)
    snr = np.where(rng.random(n) < 0.25, np.nan, rng.uniform(-5, 40, n))
    corpus = pd.DataFrame(
        {
            "path": [f"train/train_{i:06d}.flac" for i in range(n)],
            "mos": rng.uniform(1, 4.45, n),
            "sig_sim": rng.uniform(1, 4.45, n),
            "snr_db": snr,
        }
    )
    bak = np.where(np.isnan(snr), 4.2, 1.5 + 2.5 * np.nan_to_num(snr) / 40) + rng.normal(0, 0.3, n)
    teachers = pd.DataFrame(
        {
            "path": [f"data/corpus/main/{p}" for p in corpus.path],  # as teachers.py writes them: another root
            "dnsmos_sig": rng.uniform(2, 4, n),
            "dnsmos_bak": bak,
            "dnsmos_ovrl": rng.uniform(0.8, 4, n),  # DNSMOS's polynomial fits can leave 1..5
            "dnsmos_p808": rng.uniform(2, 4, n),
            "distillmos": rng.uniform(1, 5, n),
            "error": pd.Series([None] * n, dtype=object),
        }
    )
    return corpus, teachers


def test_bak_from_snr_is_monotone_and_noise_free_clips_get_the_top():
    corpus, teachers = _corpus_and_teachers()
    out = p835_labels.p835_labels(corpus, teachers, bak_teacher_weight=0.0)
    noisy = out[out.snr_db.notna()].sort_values("snr_db")
    assert (np.diff(noisy.bak_sim.to_numpy()) >= 0).all()
    assert (out.bak[out.snr_db.isna()] == out.bak_sim.max()).all()  # no added noise: the best a noisy clip got
    assert np.corrcoef(noisy.snr_db, noisy.bak)[0, 1] > 0.8


def test_fusion_weights_and_aux_columns():
    corpus, teachers = _corpus_and_teachers()
    only_sim = p835_labels.p835_labels(corpus, teachers, sig_teacher_weight=0.0, bak_teacher_weight=0.0)
    assert np.allclose(only_sim.sig, corpus.sig_sim.clip(1, 5), atol=1e-3)
    only_teacher = p835_labels.p835_labels(corpus, teachers, sig_teacher_weight=1.0, bak_teacher_weight=1.0)
    assert np.allclose(only_teacher.sig, teachers.dnsmos_sig.clip(1, 5), atol=1e-3)
    assert np.allclose(only_teacher.bak, teachers.dnsmos_bak.clip(1, 5), atol=1e-3)
    half = p835_labels.p835_labels(corpus, teachers, sig_teacher_weight=0.5)
    assert np.allclose(half.sig, (0.5 * corpus.sig_sim + 0.5 * teachers.dnsmos_sig).clip(1, 5), atol=1e-3)
    assert np.allclose(half.aux_distillmos, teachers.distillmos.clip(1, 5), atol=1e-3)
    assert half[["aux_distillmos", "aux_dnsmos_ovrl", "aux_dnsmos_p808"]].stack().between(1, 5).all()
    assert {"aux_dnsmos_ovrl", "aux_dnsmos_p808"} <= set(half.columns)
    assert list(half.path) == list(corpus.path) and np.allclose(half.mos, corpus.mos)  # mos untouched


def test_a_file_without_teacher_scores_keeps_the_simulation_alone():
    corpus, teachers = _corpus_and_teachers()
    teachers.loc[3, ["dnsmos_sig", "dnsmos_bak"]] = np.nan
    teachers.loc[3, "error"] = "unreadable"
    out = p835_labels.p835_labels(corpus, teachers)
    assert out.sig[3] == pytest.approx(min(max(corpus.sig_sim[3], 1), 5), abs=1e-3)
    assert out.bak[3] == pytest.approx(out.bak_sim[3], abs=1e-3)


def test_a_draw_without_added_noise_gets_dnsmos_bak_and_one_without_scored_noisy_clips_is_refused():
    corpus, teachers = _corpus_and_teachers()
    codecs_only = p835_labels.p835_labels(corpus.assign(snr_db=np.nan), teachers, bak_teacher_weight=0.0)
    assert np.allclose(codecs_only.bak_sim, np.median(teachers.dnsmos_bak), atol=1e-3)
    scored_clean_only = teachers.assign(dnsmos_bak=teachers.dnsmos_bak.where(corpus.snr_db.isna()))
    with pytest.raises(ValueError, match="no noisy corpus file has DNSMOS scores"):
        p835_labels.p835_labels(corpus, scored_clean_only)


@pytest.mark.parametrize("n, k", [(16, 4), (18, 4), (30, 3), (7, 1)])
def test_every_kth_file_walks_along_the_versions_of_a_groups_draw(n, k):
    plain = p835_labels._every(n, k, groups=False)
    assert list(plain) == list(range(0, n, k))
    picked = p835_labels._every(n, k, groups=True)
    assert (picked < n).all() and len(set(picked)) == len(picked) and len(picked) >= n // k - 1
    if k > 1 and n >= k * k:  # with k versions per reference every version is scored, not only the clean one
        assert set(picked % k) == set(range(k))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c, t: (c.drop(columns="sig_sim"), t), "no sig_sim column"),
        (lambda c, t: (c, t.assign(dnsmos_bak=np.nan)), "no corpus file has DNSMOS scores"),
    ],
)
def test_inputs_it_cannot_use(change, message):
    corpus, teachers = change(*_corpus_and_teachers())
    with pytest.raises(ValueError, match=message):
        p835_labels.p835_labels(corpus, teachers)
    with pytest.raises(ValueError, match="within"):
        p835_labels.p835_labels(*_corpus_and_teachers(), sig_teacher_weight=1.5)


def test_label_draw_scores_every_kth_training_file_and_its_own_share_of_validation(tmp_path, monkeypatch):
    import teachers

    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    for split, n in (("train", 40), ("val", 12), ("test", 6)):
        corpus, _ = _corpus_and_teachers(n, seed=n)
        corpus.assign(path=[f"{split}/{split}_{i:06d}.flac" for i in range(n)]).to_csv(corpus_dir / f"{split}.csv")
    scored = {}

    def fake_label_files(paths, output, names, embeddings):  # DNSMOS stand-in: BAK rises with the file number
        scored[Path(output).name.split("_")[0]] = len(paths)
        bak = np.linspace(2, 4.5, len(paths))
        pd.DataFrame({"path": paths, "dnsmos_sig": 3.0, "dnsmos_bak": bak, "dnsmos_ovrl": 3.0}).to_csv(output)

    monkeypatch.setattr(teachers, "label_files", fake_label_files)
    p835_labels.label_draw(corpus_dir, tmp_path / "labels", teacher_every=4, val_teacher_every=1)
    assert scored == {"train": 10, "val": 12, "test": 6}
    p835_labels.label_draw(corpus_dir, tmp_path / "labels4", teacher_every=4)  # validation as training by default
    assert scored == {"train": 10, "val": 3, "test": 6}
    val = pd.read_csv(tmp_path / "labels" / "val.csv")
    assert (
        val[["sig", "bak"]].notna().all().all()
        and (tmp_path / "corpus" / "val").resolve() == (tmp_path / "labels" / Path(val.path[0]).parent).resolve()
    )
    with pytest.raises(ValueError, match="val_teacher_every must be 1 or more"):
        p835_labels.label_draw(corpus_dir, tmp_path / "bad", val_teacher_every=0)
