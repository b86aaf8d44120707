"""Stage 1 of the bundled-model recipe: speaker-disjoint speech lists, file-disjoint noise lists, RIRs, and
synthetic voices, split into train / val / test.

    python training/prepare_sources.py                       # reads ../shared/data, writes data/recipe/sources
    python training/prepare_sources.py --data-root /path/to/shared/data --out data/recipe/sources --seed 0

Writes, in ``--out``:
  speech_{train,val,test}.csv   path, corpus, speaker, kind (real/synthetic), duration_s, sample_rate, licence
  noise_{train,val,test}.csv    path, folder, name, duration_s, sample_rate, licence
  rir_{train,val,test}.csv      path, name
  speech_*.txt, noise_*.txt     the same paths one per line (what `jsqa make-pairs` takes)
  synth/                        synthetic voices (espeak-ng, flite) rendered at 16 kHz, with synth/voices.csv
  sources.json                  settings, counts and minutes per split

Paths are absolute. Re-running is cheap: voices already rendered are kept (so a machine without espeak-ng /
flite reuses a synth/ folder copied from one that has them). Everything is deterministic given --seed.
See docs/recipe-data.md for what is used and why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from jsqa_cli.audio import SAMPLE_RATE, load_audio

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")

# Wideband clean references: (folder under speech/, licence). Narrowband folders (speech_narrowband/) are not
# used: a wideband MOS label needs a wideband reference, and NOIZEUS is research-only and kept for checks.
SPEECH_CORPORA = {
    "librispeech": "CC BY 4.0",
    "an4": "CMU AN4 (BSD-style)",
    "ljspeech": "public domain",
    "ivr_allison_en": "CC BY-SA 3.0",
    "ivr_carlo_it": "CC BY 3.0",
}
# One-speaker corpora cannot be split by speaker: each goes whole to one split.
SINGLE_SPEAKER_SPLIT = {"ljspeech": "train", "ivr_allison_en": "train", "ivr_carlo_it": "test"}
# Permissive noise folders only (not nonspeech100_nc: non-commercial; not NOIZEUS: research only).
NOISE_FOLDERS = {
    "ambient_blanket": "CC0 / CC BY / CC BY-SA / public domain (per file)",
    "speech_commands": "CC BY 4.0",
    "speechbrain": "Apache-2.0",
    "ambient_engine": "public domain / CC BY 4.0",
    "noisex92": "NOISEX-92 (freely redistributable)",
}
EXCLUDED_NOISE = ("nonspeech100_nc",)
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
# The Asterisk prompt sets (ivr_*) also ship silences, beeps and tones; they are not speech. Digital silence is
# caught by level too (any corpus), the tones by name.
NON_SPEECH_NAME = re.compile(r"^(silence_\d+|beep|beeperr|ascending-2tone|descending-2tone)$")
SILENCE_PEAK = 10 ** (-50 / 20)  # a file whose peak stays below -50 dBFS holds no speech


def _hash_rank(key: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for ``key``: the split does not depend on listing order."""
    return int(hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16**12


def split_keys(keys: list[str], seed: int, fractions=SPLIT_FRACTIONS, min_each: int = 1) -> dict[str, str]:
    """Assign each key to train/val/test by stable hash order, with at least ``min_each`` key per split when
    there are enough keys."""
    ordered = sorted(set(keys), key=lambda k: _hash_rank(k, seed))
    n = len(ordered)
    n_val = max(min_each, int(round(fractions[1] * n))) if n >= 3 else 0
    n_test = max(min_each, int(round(fractions[2] * n))) if n >= 3 else 0
    out = {}
    for i, k in enumerate(ordered):
        out[k] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return out


def _info(path: Path) -> tuple[float, int]:
    i = sf.info(str(path))
    return i.frames / i.samplerate, i.samplerate


def speaker_of(corpus: str, path: Path) -> str:
    if corpus == "librispeech":
        return path.name.split("-")[0]
    if corpus == "an4":  # an104-mrcb-b.flac -> mrcb
        return path.stem.split("-")[1]
    return corpus  # one speaker


def is_speech_file(path: Path) -> bool:
    """False for the non-speech files of the speech folders: known tone and silence prompts, digital silence."""
    if NON_SPEECH_NAME.match(path.stem):
        return False
    x, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return bool(x.size) and float(np.abs(x).max()) >= SILENCE_PEAK


def real_speech(data_root: Path, seed: int) -> pd.DataFrame:
    rows, skipped = [], []
    for corpus, licence in SPEECH_CORPORA.items():
        folder = data_root / "speech" / corpus
        if not folder.is_dir():
            print(f"warning: {folder} not found, skipped", file=sys.stderr)
            continue
        for p in sorted(folder.rglob("*.flac")):
            if not is_speech_file(p):
                skipped.append(p.relative_to(data_root).as_posix())
                continue
            dur, sr = _info(p)
            rows.append(
                dict(
                    path=str(p.resolve()),
                    corpus=corpus,
                    speaker=f"{corpus}:{speaker_of(corpus, p)}",
                    kind="real",
                    duration_s=round(dur, 3),
                    sample_rate=sr,
                    licence=licence,
                )
            )
    if skipped:
        print(f"{len(skipped)} non-speech files left out (silences, beeps, tones), e.g. {skipped[0]}")
    df = pd.DataFrame(rows)
    split = pd.Series("train", index=df.index)
    for corpus, g in df.groupby("corpus"):
        if corpus in SINGLE_SPEAKER_SPLIT:
            split[g.index] = SINGLE_SPEAKER_SPLIT[corpus]
        else:
            assign = split_keys(g.speaker.tolist(), seed)
            split[g.index] = g.speaker.map(assign)
    df["split"] = split
    return df


def noise_files(data_root: Path, seed: int) -> pd.DataFrame:
    rows = []
    for folder, licence in NOISE_FOLDERS.items():
        for p in sorted((data_root / "noise" / folder).glob("*.flac")):
            dur, sr = _info(p)
            rows.append(
                dict(
                    path=str(p.resolve()),
                    folder=folder,
                    name=p.stem,
                    duration_s=round(dur, 3),
                    sample_rate=sr,
                    licence=licence,
                )
            )
    df = pd.DataFrame(rows)
    # Pink and white noise exist in two folders; they are one "noise" each, so they go to the same split
    # (train: generated pink/white noise is also used for every split by the simulator).
    key = df.name.str.replace("-", "_").where(~df.name.str.contains("pink|white"), "stationary_synthetic")
    assign = split_keys([k for k in key if k != "stationary_synthetic"], seed)
    assign["stationary_synthetic"] = "train"
    df["split"] = key.map(assign)
    return df


def rirs(data_root: Path) -> pd.DataFrame:
    paths = sorted((data_root / "rir").rglob("*.flac"))
    # Only four real RIRs: two for training, one each for val and test (the simulator adds synthetic rooms).
    names = ["train", "train", "val", "test"]
    return pd.DataFrame([dict(path=str(p.resolve()), name=p.stem, split=names[i % 4]) for i, p in enumerate(paths)])


# ------------------------------------------------------------------------------------------------ synthetic voices

ESPEAK_BASES = [
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-us-nyc",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
]
ESPEAK_VARIANTS = [
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "Annie",
    "Alicia",
    "Andrea",
    "steph",
    "linda",
    "belinda",
    "anika",
    "david",
    "michael",
    "paul",
    "rob",
    "john",
    "edward",
    "iven",
    "max",
    "quincy",
    "shelby",
    "travis",
    "victor",
    "grandma",
    "grandpa",
]
FLITE_VOICES = ["kal16", "awb", "rms", "slt"]  # 16 kHz voices (plain "kal" is 8 kHz, not used)

_SUBJECTS = [
    "the old man",
    "my sister",
    "a young girl",
    "the driver",
    "our neighbour",
    "the teacher",
    "a tall soldier",
    "the small dog",
    "everyone in the room",
    "the captain",
    "her brother",
    "the doctor",
    "a stranger",
    "the children",
    "the farmer",
    "my best friend",
    "the new manager",
    "a quiet student",
    "the pilot",
    "the baker",
]
_VERBS = [
    "carried",
    "painted",
    "found",
    "opened",
    "forgot",
    "noticed",
    "repaired",
    "bought",
    "described",
    "hid",
    "sold",
    "cleaned",
    "watched",
    "measured",
    "borrowed",
    "dropped",
    "followed",
    "wrapped",
    "lifted",
    "ordered",
]
_OBJECTS = [
    "a wooden box",
    "the red umbrella",
    "seven silver coins",
    "an empty bottle",
    "the heavy door",
    "a letter from the bank",
    "the broken clock",
    "two loaves of bread",
    "the blue bicycle",
    "a map of the city",
    "the kitchen window",
    "a basket of apples",
    "the garden gate",
    "an old photograph",
    "the leather bag",
]
_PLACES = [
    "near the river",
    "before sunrise",
    "in the crowded market",
    "after the long storm",
    "on a cold morning",
    "behind the station",
    "during the meeting",
    "at the end of the street",
    "under the bridge",
    "without a word",
    "in the middle of the night",
    "next to the church",
    "on the third floor",
    "while it was raining",
    "at half past four",
]
_EXTRA = [
    "Please hold the line, your call is important to us.",
    "Could you spell your last name for me, please?",
    "The meeting has been moved to Thursday at ten fifteen.",
    "Turn left at the second traffic light.",
    "I can't believe it's already the end of September!",
    "Press one for sales, or two for technical support.",
    "The temperature tomorrow will reach twenty three degrees.",
    "Is this the train to Manchester?",
    "We need three eggs, a cup of flour and some milk.",
    "Thank you for waiting, an agent will be with you shortly.",
    "The museum opens at nine and closes at half past five.",
    "Did anyone see where I left my glasses?",
    "Your account number is four, eight, one, five, two, nine.",
    "The flight to Boston has been delayed by forty minutes.",
    "Wow, that was the best concert I have ever been to.",
    "Remember to switch off the lights when you leave.",
    "How many people are coming to dinner on Saturday?",
    "The package will arrive between noon and three o'clock.",
    "Birds were singing in the tall trees behind the house.",
    "A gentle breeze moved the curtains of the open window.",
]


def sentences(n: int, seed: int) -> list[str]:
    """``n`` varied English sentences (templates + hand-written prompts and questions), deterministic."""
    rng = np.random.default_rng(seed)
    out = list(_EXTRA)
    while len(out) < n:
        s, v, o, p = (rng.choice(w) for w in (_SUBJECTS, _VERBS, _OBJECTS, _PLACES))
        form = rng.integers(0, 4)
        text = (
            f"{s} {v} {o} {p}."
            if form == 0
            else f"{p.capitalize()}, {s} {v} {o}."
            if form == 1
            else f"Why do you think {s} {v} {o} {p}?"
            if form == 2
            else f"{s} {v} {o}, and then {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}."
        )
        out.append(text[0].upper() + text[1:])
    rng.shuffle(out)
    return out[:n]


def voices() -> list[dict]:
    v = [dict(engine="espeak-ng", voice=f"{b}+{var}") for b in ESPEAK_BASES[:2] for var in ESPEAK_VARIANTS]
    v += [dict(engine="espeak-ng", voice=f"{b}+{var}") for b in ESPEAK_BASES[2:] for var in ESPEAK_VARIANTS[:6:2]]
    v += [dict(engine="flite", voice=name) for name in FLITE_VOICES]
    return v


def _render(job: dict) -> dict | None:
    out = Path(job["out"])
    if not out.exists():
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "v.wav"
            if job["engine"] == "espeak-ng":
                cmd = [
                    "espeak-ng",
                    "-v",
                    job["voice"],
                    "-s",
                    str(job["speed"]),
                    "-p",
                    str(job["pitch"]),
                    "-w",
                    str(wav),
                    job["text"],
                ]
            else:
                cmd = [
                    "flite",
                    "-voice",
                    job["voice"],
                    "--setf",
                    f"duration_stretch={job['stretch']:.2f}",
                    "--setf",
                    f"int_f0_target_mean={job['f0']:.0f}",
                    "-t",
                    job["text"],
                    "-o",
                    str(wav),
                ]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0 or not wav.exists():
                print(f"warning: {' '.join(cmd[:3])} failed: {r.stderr.strip()[:200]}", file=sys.stderr)
                return None
            x, _ = load_audio(wav, SAMPLE_RATE)
        peak = float(np.max(np.abs(x))) + 1e-9
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(
            str(out),
            (x * min(0.5 / peak, 10 ** (-26 / 20) / (np.sqrt(np.mean(x**2)) + 1e-9))).astype(np.float32),
            SAMPLE_RATE,
            subtype="PCM_16",
        )
    return dict(
        path=str(out.resolve()),
        corpus=f"synthetic_{job['engine']}",
        speaker=f"{job['engine']}:{job['voice']}",
        kind="synthetic",
        duration_s=round(sf.info(str(out)).duration, 3),
        sample_rate=SAMPLE_RATE,
        licence="generated (espeak-ng GPL-3 / flite BSD-style engines; output unrestricted)",
        text=job["text"],
    )


def synthetic_speech(out_dir: Path, n_sentences: int, seed: int, workers: int) -> pd.DataFrame:
    """Render ``n_sentences`` sentences, each with one voice (cycling over all voices) at a random speed and
    pitch. Voices are split train/val/test as speakers are. Reuses rendered files; skips missing engines."""
    manifest = out_dir / "voices.csv"
    have = {e: shutil.which(e) is not None for e in ("espeak-ng", "flite")}
    if not all(have.values()) and manifest.exists():
        print(f"note: reusing {manifest} (espeak-ng/flite not installed here)", file=sys.stderr)
        return pd.read_csv(manifest)
    rng = np.random.default_rng(seed + 1)
    vs = [v for v in voices() if have[v["engine"]]]
    if not vs:
        print(
            "warning: neither espeak-ng nor flite found: no synthetic voices "
            "(Debian: apt-get install -y espeak-ng flite)",
            file=sys.stderr,
        )
        return pd.DataFrame()
    texts = sentences(n_sentences, seed)
    order = rng.permutation(len(vs))
    jobs = []
    for i, text in enumerate(texts):
        v = vs[order[i % len(vs)]]
        name = v["voice"].replace("+", "_")
        jobs.append(
            dict(
                engine=v["engine"],
                voice=v["voice"],
                text=text,
                speed=int(rng.integers(125, 211)),
                pitch=int(rng.integers(20, 81)),
                stretch=float(rng.uniform(0.85, 1.2)),
                f0=float(rng.uniform(90, 220)),
                out=str(out_dir / name / f"{i:04d}.flac"),
            )
        )
    with ThreadPoolExecutor(max(1, workers)) as pool:
        rows = [r for r in pool.map(_render, jobs) if r is not None]
    df = pd.DataFrame(rows)
    assign = split_keys(df.speaker.tolist(), seed)
    df["split"] = df.speaker.map(assign)
    df.to_csv(manifest, index=False)
    return df


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"), help="shared data folder")
    ap.add_argument("--out", default=str(REPO / "data" / "recipe" / "sources"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synth-sentences", type=int, default=400, help="synthetic sentences to render (0: none)")
    ap.add_argument("--workers", type=int, default=4, help="parallel TTS processes")
    args = ap.parse_args(argv)
    data_root, out = Path(args.data_root), Path(args.out)
    if not (data_root / "speech").is_dir():
        ap.error(f"{data_root}: no speech/ folder (pass --data-root)")
    out.mkdir(parents=True, exist_ok=True)

    speech = real_speech(data_root, args.seed)
    if args.synth_sentences > 0:
        synth = synthetic_speech(out / "synth", args.synth_sentences, args.seed, args.workers)
        speech = pd.concat([speech, synth.drop(columns=["text"], errors="ignore")], ignore_index=True)
    noise, rir = noise_files(data_root, args.seed), rirs(data_root)

    summary = dict(data_root=str(data_root.resolve()), seed=args.seed, splits={})
    for split in SPLITS:
        s, n, r = (d[d.split == split].drop(columns="split") for d in (speech, noise, rir))
        s.to_csv(out / f"speech_{split}.csv", index=False)
        n.to_csv(out / f"noise_{split}.csv", index=False)
        r.to_csv(out / f"rir_{split}.csv", index=False)
        (out / f"speech_{split}.txt").write_text("".join(p + "\n" for p in s.path))
        (out / f"noise_{split}.txt").write_text("".join(p + "\n" for p in n.path))
        summary["splits"][split] = dict(
            speech_files=len(s),
            speakers=int(s.speaker.nunique()),
            speech_minutes=round(s.duration_s.sum() / 60, 1),
            speech_by_corpus={
                c: dict(files=len(g), speakers=int(g.speaker.nunique()), minutes=round(g.duration_s.sum() / 60, 1))
                for c, g in s.groupby("corpus")
            },
            noise_files=len(n),
            noise_minutes=round(n.duration_s.sum() / 60, 1),
            noises=sorted(n.folder + "/" + n.name),
            rirs=sorted(r.name),
        )
    # disjointness is the point of this stage: check it
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                sa, sb = set(speech[speech.split == a].speaker), set(speech[speech.split == b].speaker)
                na, nb = set(noise[noise.split == a].path), set(noise[noise.split == b].path)
                assert not (sa & sb) and not (na & nb), f"overlap between {a} and {b}"
    (out / "sources.json").write_text(json.dumps(summary, indent=1))
    for split, d in summary["splits"].items():
        print(
            f"{split:5s}: {d['speech_files']} speech files, {d['speakers']} speakers, {d['speech_minutes']} min; "
            f"{d['noise_files']} noise files, {d['noise_minutes']} min; RIRs {d['rirs']}"
        )
    return summary


if __name__ == "__main__":
    main()
