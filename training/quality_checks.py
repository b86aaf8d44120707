"""The bundled model's quality bar, as a script: does it rank degraded speech sensibly on real recordings it
has never seen?

    python training/quality_checks.py jsqa-small                         # bundled model -> docs/quality-checks.md
    python training/quality_checks.py runs/finetune/best --out docs/quality-checks.md --json runs/qc.json

1. Degradation ladders on held-out real speech (the test split of prepare_sources.py: LibriSpeech speakers
   never used for training), each ladder from clean down to its strongest level: additive noise per test-split
   noise (and white noise, and babble of test speakers) over SNR, clipping, MP3 and Opus bitrates, packet loss
   (silent gaps and concealed), low-pass band limitation. Per ladder: the Spearman rho between ladder position
   (clean best) and the mean model score at that level, over the utterances. Bar: rho >= 0.9 for every ladder.
2. NOIZEUS (../shared/data/eval/noizeus_noisy: 30 sentences x 8 real noises x 0/5/10/15 dB, 8 kHz): mean score
   per noise and SNR. Bar: the mean rises with SNR for every noise.
3. Clean held-out speech of every test-split source (up to 30 files each: LibriSpeech, the Italian IVR voice,
   AN4, synthetic voices). Bar: the mean score of each real source is >= 3.5 ("clean -> high"), so that a
   voice's timbre is not taken for a degradation. The spread (sd) of the scores is reported with the mean.
4. Clean synthetic speech by language (information, no bar), when training/multilingual_voices.py has made
   its folder (--multilingual): the same espeak-ng engine in English (the test split's English voices) and in
   eleven other languages, so that a gap between languages is the model's, not the recordings'.

Sample sizes: every check uses all the held-out LibriSpeech speakers (up to 30 utterances, one per speaker) by
default. Clean scores of single utterances vary by about 0.5 MOS, so 10 utterances (the default before
2026-11-26) left a standard error of about 0.17 on a mean compared with a bar.

``--reference-labels`` adds, per ladder level, the label the training corpus would give (calibrated wideband
PESQ against the clean utterance): it shows whether a ladder asks for differences the labels make.

Writes a markdown report (--out) and the numbers as JSON (--json). Exit status 0 when every check passes, 1
otherwise. Scores go through jsqa_cli.scoring, exactly as `jsqa score` computes them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import impairments as imp  # noqa: E402

from jsqa_cli.audio import SAMPLE_RATE, load_audio  # noqa: E402
from jsqa_cli.model import load_model  # noqa: E402
from jsqa_cli.scoring import score_files, score_waveforms  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RHO_BAR = 0.9
CLEAN_BAR = 3.5  # mean score of clean held-out speech, per real source ("clean -> high")
SNRS = (30, 20, 15, 10, 5, 0)


def test_utterances(sources: Path, n: int, seconds: float, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """``n`` held-out real utterances (distinct speakers, LibriSpeech first), cropped to ``seconds``, -26 dBFS."""
    df = pd.read_csv(sources / "speech_test.csv")
    df = df[(df.kind == "real") & (df.duration_s >= 3.0)]
    df = df.assign(pref=(df.corpus != "librispeech").astype(int)).sort_values(["pref", "path"])
    picked = df.groupby("speaker", sort=False).head(1).head(n) if len(df) else df
    rng = np.random.default_rng(seed)
    return [_crop(load_audio(path)[0], seconds, rng) for path in picked.path], picked.path.tolist()


CROP_N = int(2.5 * SAMPLE_RATE)  # the excerpts of the within-recording steadiness figure


def _crop(x: np.ndarray, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A random excerpt of at most ``seconds`` of the signal, at the nominal -26 dBFS active level."""
    n = min(len(x), int(seconds * SAMPLE_RATE))
    start = int(rng.integers(0, len(x) - n + 1))
    return imp.set_level(x[start : start + n], imp.NOMINAL_LEVEL_DB)


def ladders(sources: Path, seed: int, babble_talkers: list[np.ndarray]) -> dict[str, list[tuple[str, callable]]]:
    """name -> [(level name, transform)], best first; the first level is always the clean signal."""
    rng_seed = seed
    out: dict[str, list] = {}

    def noise_ladder(noise_fn):
        def at(snr):
            def f(x, i):
                return imp.mix_snr(x, noise_fn(len(x), np.random.default_rng([rng_seed, i])), snr)

            return f

        return [("clean", lambda x, i: x)] + [(f"{snr} dB", at(snr)) for snr in SNRS]

    noise_csv = sources / "noise_test.csv"
    for path in pd.read_csv(noise_csv).path if noise_csv.exists() else []:
        noise = load_audio(path)[0]
        out[f"noise:{Path(path).stem}"] = noise_ladder(lambda n, rng, noise=noise: imp.fit_length(noise, n, rng))
    out["noise:white"] = noise_ladder(lambda n, rng: imp.colored_noise("white", n, rng))
    if babble_talkers:
        out["noise:babble"] = noise_ladder(lambda n, rng: imp.babble(babble_talkers, n, rng))
    out["clipping"] = [("clean", lambda x, i: x)] + [
        (f"+{od} dB", lambda x, i, od=od: imp.clip(x, od)) for od in (3, 6, 12, 18, 24)
    ]
    out["mp3"] = [("clean", lambda x, i: x)] + [
        (f"{kb} kbit/s", lambda x, i, kb=kb: imp.codec(x, "mp3", imp.MP3_LEVELS[kb])) for kb in (56, 32, 24, 16, 8)
    ]
    out["opus"] = [("clean", lambda x, i: x)] + [
        (f"level {lv}", lambda x, i, lv=lv: imp.codec(x, "opus", lv)) for lv in (0.9, 0.95, 0.97, 0.99)
    ]
    for mode in ("zero", "repeat"):
        out[f"packet_loss:{mode}"] = [("clean", lambda x, i: x)] + [
            (
                f"{pct} %",
                lambda x, i, pct=pct, mode=mode: imp.packet_loss(
                    x, pct / 100, mode, np.random.default_rng([rng_seed, i]), mean_burst=1.5
                )[0],
            )
            for pct in (2, 5, 10, 20, 30)
        ]
    out["lowpass"] = [("clean", lambda x, i: x)] + [
        (f"{hz} Hz", lambda x, i, hz=hz: imp.band_limit(x, "lowpass", hz)) for hz in (6000, 4000, 3000, 2000, 1000)
    ]
    return out


def reference_label(ref: np.ndarray, deg: np.ndarray, noisy: bool = False) -> float:
    """What the training corpus would call this clip: calibrated wideband PESQ against the clean utterance
    (simulate_mos.calibrate; ``noisy`` for additive noise), a full-reference yardstick for the ladder itself."""
    import simulate_mos

    p = simulate_mos._pesq(ref, deg)
    return simulate_mos.calibrate(p, noisy) if p is not None else float("nan")


def run_ladders(
    model, utterances: list[np.ndarray], ladder_defs: dict, batch_size: int, reference: bool = False
) -> list[dict]:
    results = []
    for name, levels in ladder_defs.items():
        waves = [fn(x, i) for _, fn in levels for i, x in enumerate(utterances)]
        scores = score_waveforms(model, waves, batch_size=batch_size).reshape(len(levels), len(utterances))
        means = scores.mean(axis=1)
        position = -np.arange(len(levels))  # clean (0) is best
        rho = float(spearmanr(position, means)[0])
        per_utt = [float(spearmanr(position, scores[:, j])[0]) for j in range(len(utterances))]
        r = dict(
            ladder=name,
            levels=[lv for lv, _ in levels],
            mean_scores=[round(float(m), 3) for m in means],
            rho=round(rho, 3),
            median_rho_per_utterance=round(float(np.nanmedian(per_utt)), 3),
            passed=bool(round(rho, 3) >= RHO_BAR),
        )  # as reported: one swap of 5 levels is 0.9 (0.8999...)
        if reference:
            labels = np.array(
                [
                    reference_label(utterances[k % len(utterances)], w, name.startswith("noise:"))
                    for k, w in enumerate(waves)
                ]
            ).reshape(len(levels), len(utterances))
            r["reference_labels"] = [round(float(m), 3) for m in np.nanmean(labels, axis=1)]
        results.append(r)
    return results


def clean_by_source(model, sources: Path, per_source: int, seconds: float, seed: int, batch_size: int) -> list[dict]:
    """Clean held-out speech of every test-split source (real corpora and synthetic voices), distinct speakers
    first, cropped to ``seconds`` at -26 dBFS. Real sources pass when their mean score is >= CLEAN_BAR.
    ``crop_sd``: how steady the score is within a recording, the mean over files of 4 s or more of the standard
    deviation of the scores of 4 evenly spaced 2.5 s excerpts (information, no bar)."""
    df = pd.read_csv(sources / "speech_test.csv")
    df = df[df.duration_s >= 2.0].sort_values("path")
    rng = np.random.default_rng(seed)
    rows = []
    for corpus, g in df.groupby("corpus"):
        g = pd.concat([g.groupby("speaker").head(1), g]).drop_duplicates("path").head(per_source)
        audio = [load_audio(p)[0] for p in g.path]  # each file read once, for both figures
        scores = score_waveforms(model, [_crop(x, seconds, rng) for x in audio], batch_size=batch_size)
        long = [x for x, d in zip(audio, g.duration_s) if d >= 4.0]
        excerpts = [
            imp.set_level(x[s : s + CROP_N], imp.NOMINAL_LEVEL_DB)
            for x in long
            for s in np.linspace(0, len(x) - CROP_N, 4).astype(int)
        ]
        crop_sd = (
            round(float(score_waveforms(model, excerpts, batch_size=batch_size).reshape(len(long), 4).std(1).mean()), 3)
            if long
            else None
        )
        real = bool((g.kind == "real").all())
        rows.append(
            dict(
                source=corpus,
                kind="real" if real else "synthetic",
                files=len(g),
                speakers=int(g.speaker.nunique()),
                mean=round(float(scores.mean()), 3),
                sd=round(float(scores.std()), 3),
                min=round(float(scores.min()), 3),
                crop_sd=crop_sd,
                passed=bool(scores.mean() >= CLEAN_BAR) if real else None,
            )
        )
    return rows


def run_noizeus(model, root: Path, limit: int | None, batch_size: int) -> dict | None:
    folders = sorted(p for p in root.glob("*_*dB") if p.is_dir()) if root.is_dir() else []
    if not folders:
        return None
    rows = []
    for folder in folders:
        noise, snr = re.fullmatch(r"(.+)_(-?\d+)dB", folder.name).groups()
        files = sorted(folder.glob("*.flac"))[:limit]
        rows += [dict(noise=noise, snr=int(snr), path=str(f)) for f in files]
    df = pd.DataFrame(rows)
    scored = score_files(df.path.tolist(), model, batch_size=batch_size)
    df["mos"] = scored.mos.to_numpy()
    table = df.pivot_table(index="noise", columns="snr", values="mos", aggfunc="mean").sort_index(axis=1)
    rising = {n: bool(np.all(np.diff(row.to_numpy()) > 0)) for n, row in table.iterrows()}
    rho = {n: round(float(spearmanr(g.snr, g.mos)[0]), 3) for n, g in df.groupby("noise")}
    return dict(
        files=len(df),
        snrs=[int(c) for c in table.columns],
        mean_scores={n: [round(float(v), 3) for v in row] for n, row in table.iterrows()},
        rising=rising,
        per_file_rho=rho,
        passed=all(rising.values()),
    )


def clean_by_language(
    model, multi: Path, sources: Path, per_language: int, seconds: float, seed: int, batch_size: int
) -> list[dict]:
    """Mean score of unimpaired espeak-ng speech per language: ``per_language`` files of each language of
    ``multi`` (multilingual_voices.py output, every split; the split is reported) and of the English espeak-ng
    voices of ``sources``' test split, cropped to ``seconds`` at -26 dBFS."""
    df = pd.concat(
        [
            pd.read_csv(multi / f"speech_{split}.csv").assign(split=split)
            for split in ("train", "val", "test")
            if (multi / f"speech_{split}.csv").is_file()
        ]
    )
    english = pd.read_csv(sources / "speech_test.csv")
    english = english[english.corpus == "synthetic_espeak-ng"].assign(language="en", split="test (English voices)")
    rng = np.random.default_rng(seed)
    rows = []
    for lang, g in pd.concat([english, df]).groupby("language", sort=False):
        g = g.sort_values("path").head(per_language)
        scores = score_waveforms(model, [_crop(load_audio(p)[0], seconds, rng) for p in g.path], batch_size=batch_size)
        rows.append(
            dict(
                language=lang,
                split=g.split.iloc[0],
                files=len(g),
                mean=round(float(scores.mean()), 3),
                sd=round(float(scores.std()), 3),
            )
        )
    return rows


def markdown(report: dict) -> str:
    refs = all("reference_labels" in r for r in report["ladders"]) and bool(report["ladders"])
    lines = [
        "# Quality checks",
        "",
        f"Model: `{report['model']}`. Generated by `python training/quality_checks.py {report['model_arg']}"
        f"{' --reference-labels' if refs else ''}` "
        "(see the script's docstring); do not edit by hand.",
        "",
        f"Held-out speech: {report['utterances']} real utterances from the test split (speakers never used in "
        f"training), {report['seconds']} s each at -26 dBFS. Noise ladders use the test split's noise files, "
        "white noise and babble of other test speakers.",
        "",
        f"**Overall: {'PASS' if report['passed'] else 'FAIL'}** (every ladder rho >= {RHO_BAR}; NOIZEUS mean "
        f"score rising with SNR for every noise; clean speech of every real source >= {CLEAN_BAR} on average).",
        "",
        "## Degradation ladders",
        "",
        "Spearman rho between ladder position (clean first) and the mean score over the utterances; the median "
        "of the per-utterance rho is shown for information.",
        "",
        "| ladder | levels (best → worst) | mean score per level | rho | median per-utt. rho | pass |"
        + (" reference label per level |" if refs else ""),
        "|---|---|---|---|---|---|" + ("---|" if refs else ""),
    ]
    for r in report["ladders"]:
        lines.append(
            f"| {r['ladder']} | {' / '.join(r['levels'])} | {' / '.join(f'{m:.2f}' for m in r['mean_scores'])} "
            f"| {r['rho']:.3f} | {r['median_rho_per_utterance']:.3f} | {'yes' if r['passed'] else '**no**'} |"
            + (f" {' / '.join(f'{m:.2f}' for m in r['reference_labels'])} |" if refs else "")
        )
    swapped = [
        f"{r['ladder']}: {r['levels'][i + 1]} over {r['levels'][i]} ({b:.3f} against {a:.3f})"
        for r in report["ladders"]
        for i, (a, b) in enumerate(zip(r["mean_scores"], r["mean_scores"][1:]))
        if b >= a
    ]
    if swapped:  # a pass at rho 0.9 can hang on a difference of a few thousandths; show it
        lines += [
            "",
            "Out of order (a level scoring at least as high as the better one before it): " + "; ".join(swapped) + ".",
        ]
    if refs:
        lines += [
            "",
            "Reference label: calibrated wideband PESQ against the clean utterance, i.e. what the "
            "training corpus would call each level (not a model score).",
        ]
    clean = report.get("clean_by_source") or []
    if clean:
        lines += [
            "",
            "## Clean held-out speech by source",
            "",
            f"Unimpaired test-split speech at -26 dBFS; pass when a real source's mean score is >= {CLEAN_BAR}.",
            "Within-recording sd: the spread of the scores of four 2.5 s excerpts of one recording (files of "
            "4 s or more), averaged over files; a steady model keeps it small.",
            "",
            "| source | kind | files (speakers) | mean score | sd | lowest | within-recording sd | pass |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in clean:
            verdict = "–" if c["passed"] is None else ("yes" if c["passed"] else "**no**")
            steady = "–" if c["crop_sd"] is None else f"{c['crop_sd']:.2f}"
            lines.append(
                f"| {c['source']} | {c['kind']} | {c['files']} ({c['speakers']}) | {c['mean']:.2f} | "
                f"{c['sd']:.2f} | {c['min']:.2f} | {steady} | {verdict} |"
            )
    langs = report.get("clean_by_language") or []
    if langs:
        lines += [
            "",
            "## Clean synthetic speech by language",
            "",
            "The same espeak-ng engine, unimpaired, at -26 dBFS (training/multilingual_voices.py; the split says "
            "whether fine-tuning heard the language). Information, no bar: listeners rate quality, not "
            "language, so the means should be close.",
            "",
            "| language | split | files | mean score | sd |",
            "|---|---|---|---|---|",
        ]
        for r in langs:
            lines.append(f"| {r['language']} | {r['split']} | {r['files']} | {r['mean']:.2f} | {r['sd']:.2f} |")
    nz = report.get("noizeus")
    if nz:
        lines += [
            "",
            "## NOIZEUS (real noisy recordings, 8 kHz)",
            "",
            f"{nz['files']} files; mean score per noise and SNR. Pass when it rises with SNR for every noise.",
            "",
            "| noise | " + " | ".join(f"{s} dB" for s in nz["snrs"]) + " | rising | per-file rho |",
            "|---|" + "---|" * len(nz["snrs"]) + "---|---|",
        ]
        for n, vals in nz["mean_scores"].items():
            lines.append(
                f"| {n} | "
                + " | ".join(f"{v:.2f}" for v in vals)
                + f" | {'yes' if nz['rising'][n] else '**no**'} | {nz['per_file_rho'][n]:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=None, help="model name, folder or Hub id (default: bundled)")
    ap.add_argument("--sources", default=str(REPO / "data" / "recipe" / "sources"), help="prepare_sources.py output")
    ap.add_argument("--noizeus", default=str(REPO.parent / "shared" / "data" / "eval" / "noizeus_noisy"))
    ap.add_argument("--out", default=None, help="markdown report (e.g. docs/quality-checks.md)")
    ap.add_argument("--json", default=None, help="numbers as JSON")
    ap.add_argument("--utterances", type=int, default=30, help="held-out utterances, one per speaker")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--noizeus-limit", type=int, default=None, help="files per NOIZEUS folder (default: all 30)")
    ap.add_argument("--clean-per-source", type=int, default=30, help="clean files per test-split source (0: skip)")
    ap.add_argument(
        "--multilingual",
        default=str(REPO / "data" / "recipe" / "sources-multi"),
        help="multilingual_voices.py output, for the clean-by-language table (skipped when missing)",
    )
    ap.add_argument("--per-language", type=int, default=24, help="clean files per language (0: skip)")
    ap.add_argument(
        "--reference-labels",
        action="store_true",
        help="also compute each ladder level's PESQ-based label (needs the pesq package)",
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sources = Path(args.sources)
    if not (sources / "speech_test.csv").exists():
        ap.error(f"{sources}: no speech_test.csv (run training/prepare_sources.py first)")
    model = load_model(args.model, device="cpu" if args.device == "auto" else args.device)
    if args.device == "auto":
        from jsqa_cli.distributed import resolve_device

        model = model.to(resolve_device("auto"))
    utterances, paths = test_utterances(sources, args.utterances, args.seconds, args.seed)
    if not utterances:
        ap.error(f"{sources}/speech_test.csv: no real test utterances of 3 s or more")
    babble_src = pd.read_csv(sources / "speech_test.csv")
    babble_src = babble_src[(babble_src.kind == "real") & ~babble_src.path.isin(paths)].head(6)
    talkers = [load_audio(p)[0] for p in babble_src.path]
    report = dict(
        model=getattr(model, "name", "") or str(args.model),
        model_arg=args.model or "",
        utterances=len(utterances),
        seconds=args.seconds,
        utterance_paths=paths,
    )
    report["ladders"] = run_ladders(
        model, utterances, ladders(sources, args.seed, talkers), args.batch_size, reference=args.reference_labels
    )
    report["noizeus"] = run_noizeus(model, Path(args.noizeus), args.noizeus_limit, args.batch_size)
    report["clean_by_source"] = (
        clean_by_source(model, sources, args.clean_per_source, args.seconds, args.seed, args.batch_size)
        if args.clean_per_source > 0
        else []
    )
    multi = Path(args.multilingual)
    report["clean_by_language"] = (
        clean_by_language(model, multi, sources, args.per_language, args.seconds, args.seed, args.batch_size)
        if args.per_language > 0 and (multi / "speech_train.csv").is_file()
        else []
    )
    report["passed"] = (
        all(r["passed"] for r in report["ladders"])
        and (report["noizeus"] or {}).get("passed", True)
        and all(c["passed"] is not False for c in report["clean_by_source"])
    )
    text = markdown(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(text)
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)
