"""Stage 3 of the bundled-model recipe: a simulated MOS corpus (a stand-in for NISQA_TRAIN_SIM).

    python training/simulate_mos.py                                  # 6000 / 600 / 600 clips, all cores
    python training/simulate_mos.py --num-files 600 60 60 --workers 2 --out data/recipe/mos_small

Clean references (4-8 s, active level -26 dBFS +- 3 dB) from the speaker-disjoint lists of
``prepare_sources.py`` are degraded by 1-3 impairments (noise from the split's own noise files, generated
noise or babble of the split's own speakers; clipping; MP3 / Vorbis / Opus / GSM / G.711 codecs; low-pass,
high-pass, narrowband; packet loss with and without concealment; echo; reverberation; too quiet / too loud; and,
when ``--family-weights`` gives it a weight, a noise suppressor's musical noise and speech distortion)
and labelled with wideband PESQ (ITU-T P.862.2) calibrated to listener scale (``label`` below and
docs/recipe-data.md). Clips are drawn until each label bin [1, 1.5), ..., [4, 4.5] holds its share.

Writes ``OUT/{train,val,test}.csv`` (path relative to the CSV, mos, condition, pesq_raw, source, ...) and
``OUT/{split}/*.flac`` (16 kHz, 16-bit), plus ``OUT/corpus.json``. ``jsqa finetune --train OUT/train.csv
--val OUT/val.csv`` reads them. Deterministic for a given --seed, whatever --workers. A killed draw goes on with
``--resume`` (OUT/journal.jsonl holds what each finished batch kept), and keeps the same clips.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import impairments as imp  # noqa: E402

from jsqa_cli.audio import SAMPLE_RATE, load_audio, rms_db  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")
BIN_EDGES = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5 + 1e-6])

# ------------------------------------------------------------------------------------------------ the label
# P: PESQ-WB MOS-LQO (1.04 .. 4.64). All constants are explained in docs/recipe-data.md.
PESQ_MIN, PESQ_MAX = 1.04, 4.64
MOS_MAX = 4.45  # listeners' score for clean wideband speech (NISQA clean conditions 4.2-4.5)
NOISE_GAMMA = 0.4  # PESQ is too harsh on additive noise: expand the low range for noisy conditions
LEVEL_SLOPE, LEVEL_FREE_DB = 0.06, 6.0  # MOS lost per dB of level error beyond +-6 dB of -26 dBFS
BPL = {"zero": 4.3, "remove": 8.0, "fade": 10.0, "repeat": 25.1}  # packet-loss robustness (G.113 G.711 values)


def calibrate(p: float, noisy: bool) -> float:
    """PESQ-WB MOS-LQO -> listener scale: linear from [1.04, 4.64] to [1, 4.45]; for conditions with
    additive noise the scale is then expanded at the low end (power NOISE_GAMMA)."""
    x = min(max((p - PESQ_MIN) / (PESQ_MAX - PESQ_MIN), 0.0), 1.0)
    return 1 + (MOS_MAX - 1) * (x**NOISE_GAMMA if noisy else x)


def mos_from_r(r: float) -> float:
    """ITU-T G.107 E-model: transmission rating R -> MOS (1 .. 4.5)."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def r_from_mos(mos: float) -> float:
    """Inverse of :func:`mos_from_r` on [0, 100] (bisection; the curve is monotonic there)."""
    lo, hi = 0.0, 100.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mos_from_r(mid) < mos else (lo, mid)
    return (lo + hi) / 2


def packet_loss_impairment(loss_pct: float, mode: str, mean_burst: float) -> float:
    """G.107 effective equipment impairment Ie,eff = (95 - Ie) Ppl / (Ppl / BurstR + Bpl), Ie = 0."""
    if loss_pct <= 0:
        return 0.0
    burst_r = max(1.0, (1 - loss_pct / 100) * mean_burst)  # BurstR = 1 / (p + q) of the two-state model
    return 95.0 * loss_pct / (loss_pct / burst_r + BPL[mode])


def echo_impairment(gain_db: float, delay_ms: float) -> float:
    """G.107 listener-echo impairment Idle with WEPL = -gain_db (dB) and round-trip delay Tr = delay_ms."""
    ro = 94.77
    rle = 10.5 * (-gain_db + 7) * (delay_ms + 1) ** -0.25
    return (ro - rle) / 2 + math.sqrt((ro - rle) ** 2 / 4 + 169)


def label(
    pesq_final: float | None, pesq_mid: float, noisy: bool, loss: tuple | None, echo: tuple | None, level_db: float
) -> float:
    """The corpus MOS. ``pesq_mid``: PESQ without the packet loss and echo steps; ``pesq_final``: PESQ of
    the delivered clip (None when frames were removed, where PESQ's time alignment is not meaningful).

    R = min(R(cal(P_final)), R(cal(P_mid)) - Ie,eff - Idle);  MOS = mos_from_r(R) - level penalty,
    clipped to [1, MOS_MAX]."""
    r = r_from_mos(calibrate(pesq_mid, noisy))
    if loss:
        r -= packet_loss_impairment(*loss)
    if echo:
        r -= echo_impairment(*echo)
    if pesq_final is not None:
        r = min(r, r_from_mos(calibrate(pesq_final, noisy)))
    mos = min(mos_from_r(r), MOS_MAX)
    mos -= LEVEL_SLOPE * max(0.0, abs(level_db - imp.NOMINAL_LEVEL_DB) - LEVEL_FREE_DB)
    return float(min(max(mos, 1.0), MOS_MAX))


# ------------------------------------------------------------------------------------------------ impairments

FAMILIES = ["noise", "codec", "packet_loss", "clip", "band", "reverb", "echo", "level", "enhance"]
# enhance (a noise suppressor's artefacts) comes last at weight 0: the draws without it stay exactly as they were
FAMILY_WEIGHTS = np.array([0.30, 0.17, 0.15, 0.09, 0.09, 0.08, 0.06, 0.06, 0.0])
ORDER = {
    f: i for i, f in enumerate(["reverb", "echo", "noise", "enhance", "level", "clip", "band", "codec", "packet_loss"])
}


def parse_family_weights(text: str) -> list[float]:
    """``"codec=0.22,band=0.13"`` -> the full weight list, defaults for the families not named."""
    weights = dict(zip(FAMILIES, FAMILY_WEIGHTS.tolist()))
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in weights:
            raise argparse.ArgumentTypeError(f"{item!r}: expected NAME=WEIGHT with NAME one of {', '.join(FAMILIES)}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: {value!r} is not a number") from None
    if min(weights.values()) < 0 or sum(weights.values()) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: weights must be >= 0 with a positive sum")
    return list(weights.values())


def strength_word(u: float) -> str:
    return "mild" if u < 1 / 3 else "mid" if u < 2 / 3 else "strong"


class Sources:
    """The split's speech (grouped by speaker, corpus-weighted), noise files and RIRs, loaded lazily."""

    CORPUS_WEIGHT = {
        "librispeech": 0.55,
        "an4": 0.08,
        "ljspeech": 0.06,
        "ivr_allison_en": 0.08,
        "ivr_carlo_it": 0.08,
        "synthetic_espeak-ng": 0.06,
        "synthetic_flite": 0.03,
    }

    def __init__(self, sources_dir: Path, split: str, synthetic_share: float):
        speech = pd.read_csv(sources_dir / f"speech_{split}.csv")
        if synthetic_share <= 0:
            speech = speech[speech.kind != "synthetic"]
        self.speakers = {s: g.path.tolist() for s, g in speech.groupby("speaker")}
        corpus_of = speech.groupby("speaker").corpus.first()
        w = np.array(
            [self.CORPUS_WEIGHT.get(corpus_of[s], 0.05) / (corpus_of == corpus_of[s]).sum() for s in self.speakers]
        )
        synth = np.array([corpus_of[s].startswith("synthetic") for s in self.speakers])
        if synth.any() and (~synth).any():  # synthetic voices get exactly synthetic_share of the draws
            w[synth] *= synthetic_share / w[synth].sum()
            w[~synth] *= (1 - synthetic_share) / w[~synth].sum()
        self.speaker_names, self.speaker_p = list(self.speakers), w / w.sum()
        self.noise = pd.read_csv(sources_dir / f"noise_{split}.csv").path.tolist()
        rir_csv = sources_dir / f"rir_{split}.csv"
        self.rirs = pd.read_csv(rir_csv).path.tolist() if rir_csv.exists() and rir_csv.stat().st_size > 1 else []
        self._cache: dict[str, np.ndarray] = {}

    def audio(self, path: str) -> np.ndarray:
        if path not in self._cache:
            if len(self._cache) > 400:
                self._cache.clear()
            self._cache[path] = load_audio(path)[0]
        return self._cache[path]

    def speech(self, rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, str]:
        """``seconds`` of one speaker: utterances joined by short pauses (looping when the speaker has little)."""
        spk = self.speaker_names[rng.choice(len(self.speaker_names), p=self.speaker_p)]
        files = self.speakers[spk]
        n, parts, first = int(seconds * SAMPLE_RATE), [], None
        for i in range(64):
            path = files[int(rng.integers(len(files)))]
            first = first or path
            x = self.audio(path)
            if not parts and len(x) > n:  # long utterance: a random crop
                start = int(rng.integers(0, len(x) - n + 1))
                return x[start : start + n], first
            parts += [x, np.zeros(int(rng.uniform(0.15, 0.5) * SAMPLE_RATE), np.float32)]
            if sum(map(len, parts)) >= n:
                break
        return np.concatenate(parts)[:n], first

    def tight_speech(self, rng: np.random.Generator, seconds: float, min_s: float = 1.5) -> tuple[np.ndarray, str]:
        """One utterance of one speaker cut at its speech (``imp.trim_pauses``), at most ``seconds`` long (a
        random crop) and at least ``min_s`` where the speaker has such an utterance."""
        spk = self.speaker_names[rng.choice(len(self.speaker_names), p=self.speaker_p)]
        files = self.speakers[spk]
        for _ in range(16):
            path = files[int(rng.integers(len(files)))]
            x = imp.trim_pauses(self.audio(path))
            if len(x) >= min_s * SAMPLE_RATE:
                break
        n = int(seconds * SAMPLE_RATE)
        start = int(rng.integers(0, len(x) - n + 1)) if len(x) > n else 0
        return x[start : start + n], path

    def noise_signal(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, str]:
        r = rng.random()
        if r < 0.7 and self.noise:
            path = self.noise[int(rng.integers(len(self.noise)))]
            return imp.fit_length(self.audio(path), n, rng), Path(path).stem
        if r < 0.85:
            kind = str(rng.choice(["white", "pink", "brown", "hum"]))
            return imp.colored_noise(kind, n, rng), kind
        talkers = [self.speech(rng, 3.0)[0] for _ in range(int(rng.integers(3, 9)))]
        return imp.babble(talkers, n, rng), "babble"

    def rir(self, rng: np.random.Generator, u: float) -> tuple[np.ndarray, str]:
        if self.rirs and rng.random() < 0.3:
            path = self.rirs[int(rng.integers(len(self.rirs)))]
            return self.audio(path), Path(path).stem
        rt60 = 0.2 + 1.3 * u
        return imp.synthetic_rir(rt60, rng, drr_db=float(rng.uniform(-3, 6))), f"rt60={rt60:.2f}s"


def degrade(x: np.ndarray, rng: np.random.Generator, src: Sources, families: list[str]) -> dict:
    """Apply ``families`` in signal-chain order. Returns the clip, the clip without packet loss and echo
    ('mid', for the PESQ label), 'speech' (mid without the added noise, for the P.835 SIG label; the same array as
    mid when there is no noise), the noise's SNR (after a noise suppressor, the SNR it leaves), and the
    parameters. Each family's strength u (0 mild .. 1 severe) is drawn from ``rng``; the speech track draws
    nothing, so draws are the same with or without it."""
    info = dict(noisy=False, loss=None, echo=None, snr_db=None, level_db=imp.active_level_db(x), parts=[], detail=[])
    y = mid = x
    speech = None  # set once noise is added: from then on the chain runs on it too

    def also(f, *args):  # the speech-only track follows mid through every step after the noise
        nonlocal speech
        if speech is not None:
            speech = f(speech, *args)

    for fam in sorted(families, key=ORDER.get):
        u = float(rng.random())
        word = strength_word(u)
        if fam == "reverb":
            h, name = src.rir(rng, u)
            y, mid = imp.reverb(y, h), imp.reverb(mid, h)
            detail = f"reverb:{name}"
        elif fam == "echo":
            delay, gain = float(rng.uniform(20, 400)), -25 + 22 * u
            y = imp.echo(y, delay, gain)
            info["echo"] = (gain, delay)
            detail = f"echo:{delay:.0f}ms@{gain:.1f}dB"
        elif fam == "noise":
            snr = 40 - 45 * u
            noise, name = src.noise_signal(rng, len(y))
            speech = mid
            y, mid = imp.mix_snr(y, noise, snr), imp.mix_snr(mid, noise, snr)
            info["noisy"], info["snr_db"] = True, snr
            detail = f"noise:{name}@{snr:.1f}dB"
        elif fam == "enhance":  # a noise suppressor on what the microphone took: on the noise, if any, and the speech
            kind, over, floor_db = str(rng.choice(imp.SUPPRESSORS)), 1 + 2 * u, -(10 + 20 * u)
            mask = imp.suppression_mask(mid, kind, over, floor_db)
            also(imp.apply_mask, mask)  # the speech the suppressor lets through (SIG)
            y_mask = mask if y is mid else imp.suppression_mask(y, kind, over, floor_db)  # y has an echo mid lacks
            y, mid = imp.apply_mask(y, y_mask), imp.apply_mask(mid, mask)
            if speech is not None:  # the noise it lets through (BAK): the mask is linear, so mid - speech
                info["snr_db"] = imp.active_level_db(speech) - max(rms_db(mid - speech), -200.0)
            word = f"{kind}-{word}"
            detail = f"enhance:{kind}@x{over:.1f},{floor_db:.0f}dB"
        elif fam == "level":
            quiet = rng.random() < 0.6
            target = imp.NOMINAL_LEVEL_DB + (-(8 + 24 * u) if quiet else 6 + 14 * u)
            g = 10 ** ((target - imp.active_level_db(y)) / 20)
            y, mid = np.clip(y * g, -1, 1), np.clip(mid * g, -1, 1)
            also(lambda z: np.clip(z * g, -1, 1))
            info["level_db"] = target
            word = ("quiet-" if quiet else "loud-") + word
            detail = f"level:{target:.1f}dBFS"
        elif fam == "clip":
            od = 2 + 28 * u
            y, mid = imp.clip(y, od), imp.clip(mid, od)
            also(imp.clip, od)
            detail = f"clip:+{od:.1f}dB"
        elif fam == "band":
            kind = str(rng.choice(["lowpass", "narrowband", "highpass"], p=[0.5, 0.3, 0.2]))
            cutoff = {"lowpass": 7000 * (1000 / 7000) ** u, "highpass": 100 * 10**u, "narrowband": None}[kind]
            y, mid = imp.band_limit(y, kind, cutoff), imp.band_limit(mid, kind, cutoff)
            also(imp.band_limit, kind, cutoff)
            if kind == "narrowband":
                word = "nb"
            detail = f"band:{kind}" + (f"@{cutoff:.0f}Hz" if cutoff else "")
        elif fam == "codec":
            name = str(
                rng.choice(["mp3", "opus", "vorbis", "gsm", "ulaw", "alaw"], p=[0.3, 0.3, 0.12, 0.14, 0.07, 0.07])
            )
            level = {"mp3": 0.8 + 0.17 * u, "opus": 0.85 + 0.14 * u, "vorbis": 0.6 + 0.4 * u}.get(name)
            y, mid = imp.codec(y, name, level), imp.codec(mid, name, level)
            also(imp.codec, name, level)
            word = name if level is None else f"{name}-{word}"
            detail = f"codec:{name}" + (f"@{level:.2f}" if level is not None else "")
        elif fam == "packet_loss":
            mode = str(rng.choice(imp.PLC_MODES))
            rate, burst, frame = 0.01 + 0.29 * u**1.5, float(rng.uniform(1, 3)), float(rng.choice([10, 20, 30]))
            y, actual = imp.packet_loss(y, rate, mode, rng, frame_ms=frame, mean_burst=burst)
            info["loss"] = (100 * actual, mode, burst)
            word = f"{mode}-{word}"
            detail = f"loss:{mode}@{100 * actual:.1f}%x{burst:.1f}/{frame:.0f}ms"
        info["parts"].append(f"{fam}-{word}")
        info["detail"].append(detail)
    info["deg"], info["mid"] = y.astype(np.float32), mid.astype(np.float32)
    info["speech"] = info["mid"] if speech is None else speech.astype(np.float32)
    return info


def _pesq(ref: np.ndarray, deg: np.ndarray) -> float | None:
    from pesq import pesq

    try:
        return float(pesq(SAMPLE_RATE, ref.astype(np.float64), deg.astype(np.float64), "wb"))
    except Exception:  # no utterance detected, buffer too short ...
        return None


_SRC: dict[str, Sources] = {}
_CFG: dict = {}


def _init_worker(cfg: dict) -> None:
    import torch

    torch.set_num_threads(1)
    _CFG.update(cfg)


def make_candidate(job: tuple[str, int]) -> list[dict] | None:
    """One candidate (deterministic in seed, split, index): a list of FLAC-encoded clips with their labels. The
    list holds one clip, or with ``versions`` > 1 a group of versions of one clean reference: the reference
    itself first, then independently degraded copies (each labelled against the same reference)."""
    split, index = job
    if split not in _SRC:
        _SRC[split] = Sources(Path(_CFG["sources"]), split, _CFG["synthetic_share"])
    src = _SRC[split]
    rng = np.random.default_rng([_CFG["seed"], SPLITS.index(split), index])
    ref, source = src.speech(rng, float(rng.uniform(4.0, 8.0)))
    if _CFG.get("tight_share", 0.0) > 0 and rng.random() < _CFG["tight_share"]:  # drawn after the usual one:
        ref, source = src.tight_speech(rng, float(rng.uniform(4.0, 8.0)))  # draws without it stay as they were
    timbre = ""
    if _CFG.get("timbre_share", 0.0) > 0 and rng.random() < _CFG["timbre_share"]:
        factor, tilt = float(rng.uniform(0.85, 1.15)), float(rng.uniform(-2.5, 2.0))
        ref = imp.spectral_tilt(imp.voice_shift(ref, factor), tilt)
        timbre = f"voice:x{factor:.2f},tilt{tilt:+.1f}dB/oct "
    ref = np.clip(imp.set_level(ref, imp.NOMINAL_LEVEL_DB + float(np.clip(rng.normal(0, 2), -3, 3))), -1, 1)
    versions = int(_CFG.get("versions", 1))
    weights = np.asarray(_CFG.get("family_weights", FAMILY_WEIGHTS), dtype=float)

    def draw_families() -> list[str]:
        k = min(int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])), int(np.count_nonzero(weights)))
        return list(rng.choice(FAMILIES, size=k, replace=False, p=weights / weights.sum()))

    clips = []
    for v in range(versions):
        clean = (versions > 1 and v == 0) or rng.random() < _CFG["clean_share"]
        d = degrade(ref, rng, src, [] if clean else draw_families())
        clip = _labelled_clip(ref, d)
        if clip is None:
            return None
        clips.append(dict(clip, detail=timbre + clip["detail"], source=_short(source)))
    return clips


def _labelled_clip(ref: np.ndarray, d: dict) -> dict | None:
    """A degraded clip (``degrade``'s output) FLAC-encoded, with its label against ``ref``; None without a label."""
    p_mid = _pesq(ref, d["mid"])
    if p_mid is None:
        return None
    removed = d["loss"] is not None and d["loss"][1] == "remove"
    p_final = (
        p_mid
        if d["deg"] is d["mid"] or (d["loss"] is None and d["echo"] is None)
        else (None if removed else _pesq(ref, d["deg"]))
    )
    mos = label(p_final, p_mid, d["noisy"], d["loss"], d["echo"], d["level_db"])
    p_speech = p_mid if d["speech"] is d["mid"] else _pesq(ref, d["speech"])
    # P.835 SIG as the simulation sees it: the same label for the chain without its added noise
    sig = None if p_speech is None else label(None, p_speech, False, d["loss"], d["echo"], d["level_db"])
    peak = float(np.max(np.abs(d["deg"])))
    deg = d["deg"] / peak * 0.999 if peak > 1 else d["deg"]
    buf = io.BytesIO()
    sf.write(buf, deg, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return dict(
        flac=buf.getvalue(),
        mos=round(mos, 3),
        condition="+".join(d["parts"]) or "clean",
        pesq_raw=round(p_final if p_final is not None else p_mid, 3),
        pesq_mid=round(p_mid, 3),
        pesq_speech=None if p_speech is None else round(p_speech, 3),
        sig_sim=None if sig is None else round(sig, 3),
        snr_db=None if d["snr_db"] is None else round(d["snr_db"], 2),
        detail=" ".join(d["detail"]),
        duration_s=round(len(deg) / SAMPLE_RATE, 3),
    )


def _short(path: str) -> str:
    """The clean file relative to the shared data root (or to the sources folder for synthetic voices)."""
    for root in (_CFG["data_root"], _CFG["sources"]):
        if root and Path(path).is_relative_to(Path(root).resolve()):
            return str(Path(path).relative_to(Path(root).resolve()))
    return path


def label_bin(mos: float) -> int:
    """The label-balance bin of ``mos``: 0 for [1, 1.5) ... 6 for [4, 4.5]."""
    return int(np.clip(np.searchsorted(BIN_EDGES, mos, side="right") - 1, 0, len(BIN_EDGES) - 2))


JOURNAL = "journal.jsonl"  # inside OUT while a draw runs: what each finished batch kept (--resume reads it)


def read_journal(out: Path, settings: dict) -> dict[str, dict]:
    """What a killed draw with the same ``settings`` kept: {split: {"rows": [...], "drawn": n, "done": bool}},
    up to its last finished batch. Empty when there is no journal or it was written for other settings."""
    path = out / JOURNAL
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    try:
        if not lines or json.loads(lines[0]).get("settings") != settings:
            return {}
        state: dict[str, dict] = {}
        for line in lines[1:]:
            entry = json.loads(line)
            split = state.setdefault(entry["split"], {"rows": [], "drawn": 0, "done": False})
            split["rows"] += entry.get("rows", [])
            split["drawn"] = entry.get("drawn", split["drawn"])
            split["done"] = split["done"] or entry.get("done", False)
    except (ValueError, KeyError, TypeError):  # a line cut short by the kill: keep what came before it
        pass
    return state


def build_split(
    pool, split: str, n: int, out: Path, max_factor: float, chunksize: int, journal=None, resumed: dict | None = None
) -> pd.DataFrame:
    """Draw candidates in index order and keep each one whose label bin still has room (n / 7 per bin);
    after ``max_factor * n`` candidates the remaining places are filled by whatever comes. Groups of versions
    (``--versions``) are kept whole, without label balancing, until at least ``n`` clips are written.

    Each finished batch is appended to ``journal`` (an open file) as the rows it kept and the candidates drawn so
    far; ``resumed`` (read_journal's entry for this split) goes on from there. Every candidate is deterministic in
    its index, so a resumed draw keeps exactly the clips an uninterrupted one would."""
    quota = np.full(len(BIN_EDGES) - 1, n // (len(BIN_EDGES) - 1))
    quota[: n - quota.sum()] += 1
    rows, drawn = list((resumed or {}).get("rows", [])), int((resumed or {}).get("drawn", 0))
    counts = np.zeros_like(quota)
    for row in rows:
        counts[label_bin(row["mos"])] += 1
    (out / split).mkdir(parents=True, exist_ok=True)
    limit = int(max_factor * n)
    batch = max(8, 8 * getattr(pool, "_processes", 1))
    start = drawn
    while len(rows) < n:  # bounded batches: nothing is queued past the end
        kept = []
        candidates = pool.map(make_candidate, [(split, i) for i in range(start, start + batch)], chunksize)
        for i, clips in enumerate(candidates, start):
            drawn = i + 1
            if clips is not None and len(clips) > 1:  # a group of versions of one reference
                for k, c in enumerate(clips):
                    counts[label_bin(c["mos"])] += 1
                    rel = f"{split}/{split}_{i:06d}_v{k}.flac"
                    (out / rel).write_bytes(c.pop("flac"))
                    kept.append(dict(path=rel, group=f"{split}_{i:06d}", **c))
            elif clips is not None:
                c = clips[0]
                b = label_bin(c["mos"])
                if counts[b] < quota[b] or drawn > limit:
                    counts[b] += 1
                    rel = f"{split}/{split}_{i:06d}.flac"
                    (out / rel).write_bytes(c.pop("flac"))
                    kept.append(dict(path=rel, **c))
            if len(rows) + len(kept) >= n:
                break
            if drawn % 500 == 0:
                print(f"  {split}: {drawn} drawn, {len(rows) + len(kept)}/{n} kept, bins {counts.tolist()}", flush=True)
        rows += kept
        start = drawn
        if journal is not None:
            journal.write(json.dumps({"split": split, "drawn": drawn, "rows": kept}, default=float) + "\n")
            journal.flush()
    columns = [
        "path", "mos", "condition", "pesq_raw", "pesq_mid", "pesq_speech", "sig_sim", "snr_db", "source", "detail",
        "duration_s",
    ]  # fmt: skip
    df = pd.DataFrame(rows)[columns + (["group"] if rows and "group" in rows[0] else [])]
    df.to_csv(out / f"{split}.csv", index=False)
    if journal is not None:
        journal.write(json.dumps({"split": split, "done": True}) + "\n")
        journal.flush()
    return df, drawn


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", default=str(REPO / "data" / "recipe" / "sources"), help="prepare_sources.py output")
    ap.add_argument("--out", default=str(REPO / "data" / "recipe" / "mos"))
    ap.add_argument("--num-files", type=int, nargs=3, default=[6000, 600, 600], metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--synthetic-share",
        type=float,
        default=0.08,
        help="share of clips whose clean reference is a synthetic voice (0: none)",
    )
    ap.add_argument("--clean-share", type=float, default=0.06, help="share of candidates left unimpaired")
    ap.add_argument(
        "--timbre-share",
        type=float,
        default=0.0,
        help="share of clean references given another voice (speed perturbation x0.85-1.15, which "
        "also stretches the clip to 3.5-9.4 s) and spectral tilt (-2.5..+2 dB/octave) before "
        "degradation; labels stay relative to them",
    )
    ap.add_argument(
        "--tight-share",
        type=float,
        default=0.0,
        help="share of clean references that are one utterance cut at its speech, with no pause "
        "before or after (as voice-service prompts are cut; 1.5-8 s) instead of utterances joined by "
        "pauses",
    )
    defaults = ", ".join(f"{f}={w:g}" for f, w in zip(FAMILIES, FAMILY_WEIGHTS))
    ap.add_argument(
        "--family-weights",
        type=parse_family_weights,
        default=FAMILY_WEIGHTS.tolist(),
        metavar="NAME=W,...",
        help=f"override impairment family weights, e.g. codec=0.22,band=0.13 (defaults {defaults}; renormalised)",
    )
    ap.add_argument(
        "--versions",
        type=int,
        default=1,
        help="clips per clean reference: with 2 or more, the "
        "reference itself and independently degraded copies, sharing a `group` column (for `jsqa "
        "finetune --rank-weight`); groups are kept whole and not label-balanced",
    )
    ap.add_argument(
        "--max-factor",
        type=float,
        default=4.0,
        help="candidates drawn per kept clip before giving up on the label balance",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help=f"go on with a killed draw of the same settings in --out (from its {JOURNAL}): the same clips as "
        "an uninterrupted draw; without it a draw starts afresh",
    )
    args = ap.parse_args(argv)
    if args.versions < 1:
        ap.error(f"--versions must be at least 1 (got {args.versions})")
    sources, out = Path(args.sources), Path(args.out)
    if not (sources / "speech_train.csv").exists():
        ap.error(f"{sources}: no speech_train.csv (run training/prepare_sources.py first)")
    try:
        import pesq  # noqa: F401
    except ImportError:
        ap.error("the `pesq` package is needed: pip install 'jsqa[recipe]' (or pip install pesq)")
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((sources / "sources.json").read_text()) if (sources / "sources.json").exists() else {}
    cfg = dict(
        sources=str(sources),
        seed=args.seed,
        synthetic_share=args.synthetic_share,
        clean_share=args.clean_share,
        timbre_share=args.timbre_share,
        tight_share=args.tight_share,
        versions=args.versions,
        family_weights=args.family_weights,
        data_root=meta.get("data_root", ""),
    )
    summary = dict(settings={k: v for k, v in vars(args).items() if k != "resume"}, splits={})
    settings = {**summary["settings"], "workers": None}  # what the clips depend on (not --workers)
    resumed = read_journal(out, settings) if args.resume else {}
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
    with ctx.Pool(args.workers, initializer=_init_worker, initargs=(cfg,)) as pool, open(out / JOURNAL, "a") as journal:
        if not resumed:
            journal.truncate(0)
            journal.write(json.dumps({"settings": settings}) + "\n")
        for split, n in zip(SPLITS, args.num_files):
            if n <= 0:
                continue
            t = time.perf_counter()
            state = resumed.get(split, {})
            if state.get("done"):
                print(f"{split}: done before this run (--resume)", flush=True)
                df, drawn = pd.read_csv(out / f"{split}.csv"), state["drawn"]
            else:
                if state:
                    print(f"{split}: resuming after {state['drawn']} candidates, {len(state['rows'])} kept", flush=True)
                df, drawn = build_split(pool, split, n, out, args.max_factor, 2, journal, state)
            wall = time.perf_counter() - t
            hist = np.histogram(df.mos, BIN_EDGES)[0].tolist()
            summary["splits"][split] = dict(
                files=len(df),
                drawn=drawn,
                seconds=round(wall, 1),
                files_per_s=round(len(df) / wall, 2),
                mos_mean=round(df.mos.mean(), 3),
                mos_std=round(df.mos.std(), 3),
                mos_hist=hist,
                below_1_5=round(float((df.mos < 1.5).mean()), 3),
                pesq_raw_below_1_5=round(float((df.pesq_raw < 1.5).mean()), 3),
                hours=round(df.duration_s.sum() / 3600, 2),
            )
            print(
                f"{split}: {len(df)} clips ({drawn} drawn) in {wall:.0f} s = {len(df) / wall:.2f} files/s; "
                f"MOS mean {df.mos.mean():.2f}, bins {hist}",
                flush=True,
            )
        pool.terminate()
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "corpus.json").write_text(json.dumps(summary, indent=1))
    (out / JOURNAL).unlink()
    return summary


if __name__ == "__main__":
    main()
