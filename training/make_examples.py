"""Build examples/: three real LibriSpeech clips (CC BY 4.0) and degraded versions, in mixed formats.

    python training/make_examples.py                      # reads ../shared/data, writes examples/
    python training/make_examples.py --data-root /path/to/shared/data --out examples

Deterministic: the same audio comes out every time (fixed utterances, crops and seeds; only the Ogg
stream serial number of the Opus file varies). The speakers are in
the test split of prepare_sources.py (seed 0), so the bundled model never trained on them. examples/README.md
(attribution and what each file is) is written too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import impairments as imp  # noqa: E402

from jsqa_cli.audio import SAMPLE_RATE, load_audio  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LIBRI = "speech/librispeech"
# (name, LibriSpeech file under speech/librispeech, start s); 4 s each
CLIPS = [
    ("ls533", "test-other/533/1066/533-1066-0003.flac", 0.3),
    ("ls1069", "train-clean-100/1069/133699/1069-133699-0000.flac", 1.0),
    ("ls4340", "train-clean-100/4340/15220/4340-15220-0000.flac", 0.5),
]
SECONDS = 4.0
NOISE = "noise/speech_commands/doing_the_dishes.flac"  # CC BY 4.0 (Speech Commands, Warden 2018)


def _write(out: Path, name: str, x: np.ndarray, **kw) -> Path:
    path = out / name
    sf.write(str(path), np.clip(x, -1, 1), kw.pop("samplerate", SAMPLE_RATE), **kw)
    return path


def build(data_root: Path, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    clean = {}
    for name, rel, start in CLIPS:
        x, _ = load_audio(data_root / LIBRI / rel, start_s=start, duration_s=SECONDS)
        clean[name] = imp.set_level(x, imp.NOMINAL_LEVEL_DB)
    rng = lambda k: np.random.default_rng([7, k])  # noqa: E731
    dishes = load_audio(data_root / NOISE)[0]
    a, b, c = (clean[n] for n, _, _ in CLIPS)
    babble_talkers = [
        clean["ls1069"],
        clean["ls4340"],
        np.roll(clean["ls1069"], 20000),
        np.roll(clean["ls4340"], 30000),
    ]
    rows = [
        ("ls533_clean.flac", "ls533", "clean (original recording, level set to -26 dBFS)", a, {}),
        (
            "ls533_noise_dishes_5dB.flac",
            "ls533",
            "kitchen noise (Speech Commands 'doing the dishes') at 5 dB SNR",
            imp.mix_snr(a, imp.fit_length(dishes, len(a), rng(1)), 5.0),
            {},
        ),
        (
            "ls533_mp3_16kbps.mp3",
            "ls533",
            "MP3 at 16 kbit/s (CBR)",
            a,
            dict(format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="CONSTANT", compression_level=imp.MP3_LEVELS[16]),
        ),
        (
            "ls533_packetloss_10pct.wav",
            "ls533",
            "packet loss: 10 % of 20 ms frames lost, silent gaps (no concealment)",
            imp.packet_loss(a, 0.10, "zero", rng(2), mean_burst=1.5)[0],
            dict(subtype="PCM_16"),
        ),
        ("ls1069_clean.wav", "ls1069", "clean (original recording, level set to -26 dBFS)", b, dict(subtype="PCM_16")),
        (
            "ls1069_clipped_18dB.flac",
            "ls1069",
            "hard clipping, peak driven 18 dB over full scale (level restored)",
            imp.clip(b, 18.0),
            {},
        ),
        (
            "ls1069_opus_8kbps.ogg",
            "ls1069",
            "Opus at about 8.5 kbit/s (Ogg)",
            b,
            dict(format="OGG", subtype="OPUS", compression_level=0.99),
        ),
        ("ls4340_clean.flac", "ls4340", "clean (original recording, level set to -26 dBFS)", c, {}),
        (
            "ls4340_babble_0dB.flac",
            "ls4340",
            "babble of four LibriSpeech talkers at 0 dB SNR",
            imp.mix_snr(c, imp.babble(babble_talkers, len(c), rng(3)), 0.0),
            {},
        ),
        (
            "ls4340_gsm_narrowband.wav",
            "ls4340",
            "GSM 06.10 full-rate codec, 8 kHz narrowband (WAV, GSM610)",
            imp.band_limit(c, "narrowband"),
            dict(subtype="GSM610", samplerate=8000),
        ),
        (
            "ls4340_packetloss_concealed_15pct.flac",
            "ls4340",
            "packet loss: 15 % of 20 ms frames lost, concealed by repeating the last frame",
            imp.packet_loss(c, 0.15, "repeat", rng(4), mean_burst=1.5)[0],
            {},
        ),
    ]
    written = []
    for fname, clip, what, x, kw in rows:
        if kw.get("samplerate") == 8000:
            from jsqa_cli.audio import resample

            x = resample(x, SAMPLE_RATE, 8000)
        path = _write(out, fname, x, **kw)
        written.append(dict(file=fname, clip=clip, what=what, bytes=path.stat().st_size))
    (out / "README.md").write_text(readme(written))
    return written


def readme(written: list[dict]) -> str:
    lines = [
        "# Example clips",
        "",
        "Short speech clips for trying `jsqa score`:",
        "",
        "```bash",
        "jsqa score examples/ -o scores.csv",
        "```",
        "",
        "Generated by `python training/make_examples.py` (deterministic) from the shared data.",
        "",
        "## Attribution and licence",
        "",
        'The speech is from **LibriSpeech** (V. Panayotov, G. Chen, D. Povey, S. Khudanpur, "LibriSpeech: an ASR '
        'corpus based on public domain audio books", ICASSP 2015; openslr.org/12), licensed **CC BY 4.0**. '
        f"Each clip is a {SECONDS:.0f} s excerpt, level-normalised, and the degraded files are modified versions "
        "(changes listed below). The kitchen noise in one file is from the **Speech Commands** dataset "
        "(P. Warden, 2018, background noise `doing_the_dishes`), CC BY 4.0.",
        "",
        "| clip | LibriSpeech speaker | chapter | utterance file |",
        "|---|---|---|---|",
    ]
    for n, rel, _ in CLIPS:
        spk, chap = rel.split("/")[1:3]
        lines.append(f"| {n} | {spk} | {chap} | `{rel.split('/')[-1]}` ({rel.split('/')[0]}) |")
    lines += ["", "## Files", "", "| file | clip | what was done |", "|---|---|---|"]
    lines += [f"| `{w['file']}` | {w['clip']} | {w['what']} |" for w in written]
    lines += [
        "",
        "The three speakers are in the held-out test split of `training/prepare_sources.py`: the bundled "
        "model did not train on them.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(REPO / "examples"))
    args = ap.parse_args(argv)
    written = build(Path(args.data_root), Path(args.out))
    total = sum(w["bytes"] for w in written)
    print(f"{len(written)} files, {total / 1e6:.2f} MB in {args.out}")
    return written


if __name__ == "__main__":
    main()
