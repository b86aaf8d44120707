"""JND audio pairs: the manifest ``make_pairs`` writes, :func:`mix_at_snr` (the one mixing function), and the
on-the-fly :class:`PairDataset` that ``pretrain`` reads.

A pair is two mixtures of clean speech and noise whose SNRs differ by at most the JND (δ ≤ 3 dB by default), so a
listener hears them as the same quality. Two pairing modes (``--pairing``):

- ``same-source``: both members use the same speech crop and the same noise crop; only the SNR differs.
- ``cross-source``: members use different utterances (different speakers where possible) and different crops of
  the same noise file (same channel), so that only quality, not content, can match them.

Both members share the speech level (drawn per pair); the noise is what is scaled to reach each SNR. A pair is
described entirely by one manifest row (files, offsets, channel, SNRs, level), so the mixtures are a pure function
of the row: ``make_pairs --write-audio`` and the training loader produce the same samples.

Manifest layout (``PAIRS_DIR``)::

    pairs.csv     one row per pair (see MANIFEST_COLUMNS)
    pairs.json    settings, counts, sources, what was skipped
    audio/        only with --write-audio: <split>/<pair_id>_a.flac and _b.flac
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from jsqa_cli.audio import SAMPLE_RATE, SILENCE_PEAK, AudioError, find_audio, load_audio

MANIFEST_NAME = "pairs.csv"
SETTINGS_NAME = "pairs.json"
AUDIO_DIR = "audio"
PAIRINGS = ("cross-source", "same-source")
DEFAULT_PAIRING = "cross-source"
LEVEL_RANGE_DB = (-35.0, -15.0)  # speech level (RMS dBFS), drawn per pair, shared by both members
MAX_PEAK = 0.99  # mixtures louder than this are scaled down (all members of a pair by the same factor)
WHOLE_FILE_S = 60.0  # files up to this long are decoded whole (and cached); longer ones are read by seeking
MAX_TRIES = 20  # redraws of a silent speech or noise crop before giving up on a pair

MANIFEST_COLUMNS = [
    "pair_id",
    "split",
    "pairing",
    "seconds",
    "snr_a",
    "snr_b",
    "speech_level_db",
    "seed",
    "speech_a",
    "speech_offset_a",
    "speech_b",
    "speech_offset_b",
    "noise_a",
    "noise_offset_a",
    "noise_b",
    "noise_offset_b",
    "noise_channel",
    "audio_a",
    "audio_b",
]


class PairDataError(ValueError):
    """A pair that cannot be rendered. One line, naming the pair and the file; stays one line when a DataLoader
    worker re-raises it in the main process (the worker's traceback is reduced to its last line)."""

    def __init__(self, message: str):
        if message.startswith("Caught ") and "\n" in message:  # re-raised by torch's DataLoader worker wrapper
            last = [line for line in message.splitlines() if line.strip()][-1]
            message = last.split(": ", 1)[1] if last.startswith(("jsqa_cli.", "PairDataError")) else last
        super().__init__(message)


# ------------------------------------------------------------------------------------------------ mixing


def mix_at_snr(
    speech, noise, snr_db, speech_level_db: float | None = None, max_peak: float = MAX_PEAK, return_parts: bool = False
):
    """Mix speech and noise at ``snr_db``: the one mixing function of jsqa (pairs, loader, recipes).

    ``speech``/``noise``: (T,) or (M, T) arrays, broadcast against ``snr_db`` (scalar or (M,)) to M members.
    Each member's speech is scaled to ``speech_level_db`` (RMS dBFS) when given, else kept as is; the noise is
    scaled so that 10·log10(Σspeech² / Σnoise²) equals the member's SNR. If any member would peak above
    ``max_peak``, *all* members are scaled by the same factor, so levels stay shared and SNRs exact.
    Returns float32 (M, T) — or (T,) when all inputs were 1-D/scalar — and with ``return_parts`` also the scaled
    speech and noise components (mixture = speech + noise). Raises ValueError for silent speech or noise.
    """
    single = np.ndim(speech) == 1 and np.ndim(noise) == 1 and np.ndim(snr_db) == 0
    s = np.atleast_2d(np.asarray(speech, dtype=np.float64))
    n = np.atleast_2d(np.asarray(noise, dtype=np.float64))
    snr = np.atleast_1d(np.asarray(snr_db, dtype=np.float64))[:, None]
    if s.shape[-1] != n.shape[-1]:
        raise ValueError(f"speech and noise lengths differ ({s.shape[-1]} vs {n.shape[-1]} samples)")
    members = max(len(s), len(n), len(snr))
    s, n = np.broadcast_to(s, (members, s.shape[-1])), np.broadcast_to(n, (members, n.shape[-1]))
    s_pow = np.mean(s * s, axis=1, keepdims=True)
    n_pow = np.mean(n * n, axis=1, keepdims=True)
    if np.any(s_pow <= 0):
        raise ValueError("speech is digital silence: cannot set an SNR")
    if np.any(n_pow <= 0):
        raise ValueError("noise is digital silence: cannot set an SNR")
    if speech_level_db is not None:
        s = s * np.sqrt(10 ** (speech_level_db / 10) / s_pow)
        s_pow = np.full_like(s_pow, 10 ** (speech_level_db / 10))
    n = n * np.sqrt(s_pow / (n_pow * 10 ** (snr / 10)))
    mix = s + n
    peak = float(np.max(np.abs(mix)))
    if peak > max_peak:
        gain = max_peak / peak
        mix, s, n = mix * gain, s * gain, n * gain
    out = [x[0] if single else x for x in (mix.astype(np.float32), s.astype(np.float32), n.astype(np.float32))]
    return tuple(out) if return_parts else out[0]


def measured_snr(speech_part: np.ndarray, noise_part: np.ndarray) -> np.ndarray:
    """SNR in dB of the components :func:`mix_at_snr` returns (per member)."""
    s, n = np.atleast_2d(speech_part).astype(np.float64), np.atleast_2d(noise_part).astype(np.float64)
    return 10 * np.log10(np.sum(s * s, axis=1) / np.sum(n * n, axis=1))


# ------------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class Source:
    path: str
    duration_s: float
    channels: int
    speaker: str = ""


_LIBRI_STEM = re.compile(r"^(\d+)-\d+-\d+$")


def speaker_of(path: str | Path) -> str:
    """LibriSpeech ``<spk>-<chapter>-<utt>`` → speaker id; any other layout → the parent folder."""
    path = Path(path)
    m = _LIBRI_STEM.match(path.stem)
    return m.group(1) if m else str(path.parent)


def discover_audio(dirs) -> list[Path]:
    """All audio files under ``dirs`` (folders searched recursively, files taken as is), sorted, deduplicated.

    A ``.txt`` file is a list: one audio path per line (relative paths are relative to the list's folder;
    blank lines and lines starting with ``#`` are ignored), e.g. one split of a speaker-disjoint recipe."""
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    paths: list[Path] = []
    for d in (Path(x).expanduser() for x in dirs):
        if d.is_file() and d.suffix.lower() == ".txt":
            lines = [ln.strip() for ln in d.read_text().splitlines()]
            listed = [d.parent / ln for ln in lines if ln and not ln.startswith("#")]
            missing = [p for p in listed if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{d}: lists {len(missing)} missing file(s), e.g. {missing[0]}")
            paths.extend(listed)
        else:
            paths.append(d)
    return sorted({p.resolve() for p in find_audio(paths)})


def probe_sources(paths, skipped: list[str] | None = None) -> list[Source]:
    """Header-only probe (duration, channels) of each file; unreadable files are skipped and reported."""
    out = []
    for p in paths:
        try:
            info = sf.info(str(p))
        except Exception as e:  # noqa: BLE001 - libsndfile raises several types; the file is reported, not fatal
            if skipped is not None:
                skipped.append(f"{p}: not a readable audio file ({str(e).splitlines()[0]})")
            continue
        if info.frames == 0:
            if skipped is not None:
                skipped.append(f"{p}: no audio samples")
            continue
        out.append(Source(str(p), info.frames / info.samplerate, info.channels, speaker_of(p)))
    return out


class SourceReader:
    """Reads crops of speech and noise files at the model rate; decoded whole files are kept in a per-process LRU
    cache (LibriSpeech utterances are small, decoding FLAC dominates otherwise). Files longer than
    :data:`WHOLE_FILE_S` are read by seeking instead. The crop is a pure function of (file, offset, length,
    channel): whether a file was cached never changes the samples."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, cache_mb: float = 512.0):
        self.sample_rate = sample_rate
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._used = 0
        self._durations: dict[str, float] = {}

    def _duration(self, path: str) -> float:
        if path not in self._durations:
            if not os.path.isfile(path):
                raise AudioError(path, "no such file")
            try:
                info = sf.info(path)
            except Exception as e:  # noqa: BLE001
                raise AudioError(path, f"not a readable audio file ({str(e).splitlines()[0]})") from None
            self._durations[path] = info.frames / info.samplerate
        return self._durations[path]

    def _whole(self, path: str, channel: int | None) -> np.ndarray:
        key = (path, channel)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        wav, _ = load_audio(path, self.sample_rate, channel=channel)
        if wav.nbytes <= self.cache_bytes:
            self._cache[key] = wav
            self._used += wav.nbytes
            while self._used > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._used -= old.nbytes
        return wav

    def crop(self, path: str, offset_s: float, seconds: float, channel: int | None = None) -> np.ndarray:
        """``seconds`` of audio from ``offset_s``; files shorter than the crop are looped (circularly, from the
        offset). Always exactly round(seconds·rate) samples."""
        n = int(round(seconds * self.sample_rate))
        duration = self._duration(path)
        if duration <= WHOLE_FILE_S or duration < seconds:
            wav = self._whole(path, channel)
            start = int(round(offset_s * self.sample_rate))
            if len(wav) >= start + n:
                return wav[start : start + n]
            return np.resize(np.roll(wav, -(start % len(wav))), n)  # loop a short file
        wav, _ = load_audio(path, self.sample_rate, channel=channel, start_s=offset_s, duration_s=seconds)
        return wav[:n] if len(wav) >= n else np.resize(wav, n)


# ------------------------------------------------------------------------------------------------ drawing pairs


def draw_snrs(rng: np.random.Generator, snr_min: float, snr_max: float, jnd_db: float) -> tuple[float, float]:
    """Two SNRs δ ~ U(0, jnd] apart, both within [snr_min, snr_max], in random order."""
    delta = float(rng.uniform(0, jnd_db)) if jnd_db > 0 else 0.0
    delta = min(delta, snr_max - snr_min)
    lo = float(rng.uniform(snr_min, snr_max - delta))
    return (lo, lo + delta) if rng.random() < 0.5 else (lo + delta, lo)


def hard_negative_snr(rng: np.random.Generator, snr: float, jnd_db: float, snr_min: float, snr_max: float) -> float:
    """An SNR at least 2·JND (and at most 3·JND) from ``snr``, on the side that stays in range where possible."""
    gap = float(rng.uniform(2 * jnd_db, 3 * jnd_db))
    up, down = snr + gap, snr - gap
    if up > snr_max and down >= snr_min:
        return down
    if down < snr_min and up <= snr_max:
        return up
    return up if rng.random() < 0.5 else down


def _offset(rng: np.random.Generator, duration: float, seconds: float) -> float:
    """A crop start in seconds (ms resolution); for files shorter than the crop, a loop start point."""
    span = duration - seconds if duration >= seconds else duration
    return round(float(rng.uniform(0, max(span, 0.0))), 3)


@dataclass
class _DrawContext:
    speech: dict  # split -> list[Source]
    noise: list
    seconds: float
    sample_rate: int
    jnd_db: float
    snr_min: float
    snr_max: float
    level_range: tuple
    seed: int
    pairing: str
    check_silence: bool = True


_CTX: _DrawContext | None = None
_READER: SourceReader | None = None


def _init_worker(ctx: _DrawContext) -> None:
    global _CTX, _READER
    _CTX, _READER = ctx, SourceReader(ctx.sample_rate, cache_mb=256)


def _silent(reader: SourceReader, path: str, offset: float, seconds: float, channel) -> bool:
    wav = reader.crop(path, offset, seconds, channel)
    return float(np.max(np.abs(wav))) < SILENCE_PEAK


def _draw_pair(task: tuple[str, int, int]) -> tuple[dict | None, dict]:
    """Draw one pair deterministically from (seed, split, index). Returns (row or None, counters)."""
    split, split_code, index = task
    ctx, reader = _CTX, _READER
    seed = int(np.random.SeedSequence([ctx.seed, split_code, index]).generate_state(1)[0])
    rng = np.random.default_rng(seed)
    speech = ctx.speech[split]
    counts = {"silent_speech_crops": 0, "silent_noise_crops": 0, "unreadable": 0}
    for _ in range(MAX_TRIES):
        sa = speech[rng.integers(len(speech))]
        sb = sa
        if ctx.pairing == "cross-source" and len(speech) > 1:
            for _ in range(10):  # a different speaker where possible, else at least a different file
                sb = speech[rng.integers(len(speech))]
                if sb.speaker != sa.speaker:
                    break
            if sb.path == sa.path:
                sb = speech[(speech.index(sa) + 1) % len(speech)]
        nz = ctx.noise[rng.integers(len(ctx.noise))]
        channel = int(rng.integers(nz.channels)) if nz.channels > 1 else None
        off_sa = _offset(rng, sa.duration_s, ctx.seconds)
        off_sb = off_sa if sb is sa else _offset(rng, sb.duration_s, ctx.seconds)
        off_na = _offset(rng, nz.duration_s, ctx.seconds)
        off_nb = off_na if ctx.pairing == "same-source" else _offset(rng, nz.duration_s, ctx.seconds)
        snr_a, snr_b = draw_snrs(rng, ctx.snr_min, ctx.snr_max, ctx.jnd_db)
        level = round(float(rng.uniform(*ctx.level_range)), 2)
        if ctx.check_silence:
            try:
                if any(_silent(reader, s.path, o, ctx.seconds, None) for s, o in {(sa, off_sa), (sb, off_sb)}):
                    counts["silent_speech_crops"] += 1
                    continue
                if any(_silent(reader, nz.path, o, ctx.seconds, channel) for o in {off_na, off_nb}):
                    counts["silent_noise_crops"] += 1
                    continue
            except AudioError:
                counts["unreadable"] += 1
                continue
        row = dict(
            pair_id=index,
            split=split,
            pairing=ctx.pairing,
            seconds=ctx.seconds,
            snr_a=round(snr_a, 4),
            snr_b=round(snr_b, 4),
            speech_level_db=level,
            seed=seed,
            speech_a=sa.path,
            speech_offset_a=off_sa,
            speech_b=sb.path,
            speech_offset_b=off_sb,
            noise_a=nz.path,
            noise_offset_a=off_na,
            noise_b=nz.path,
            noise_offset_b=off_nb,
            noise_channel=-1 if channel is None else channel,
            audio_a="",
            audio_b="",
        )
        return row, counts
    return None, counts


def render_pair(row, reader: SourceReader, snrs=None, level_db: float | None = None) -> np.ndarray:
    """The mixtures a manifest row describes: (M, T) float32, members a, b and then one view per extra SNR.

    ``snrs`` overrides the SNRs (views beyond the second reuse member a's speech and noise crop: same-source
    hard negatives). All views share the speech level and the clipping gain."""
    seconds, channel = float(row["seconds"]), int(row["noise_channel"])
    channel = None if channel < 0 else channel
    try:
        sa = reader.crop(row["speech_a"], float(row["speech_offset_a"]), seconds)
        sb = reader.crop(row["speech_b"], float(row["speech_offset_b"]), seconds)
        na = reader.crop(row["noise_a"], float(row["noise_offset_a"]), seconds, channel)
        nb = reader.crop(row["noise_b"], float(row["noise_offset_b"]), seconds, channel)
    except AudioError as e:
        raise PairDataError(f"pair {row['pair_id']}: {e}") from None
    snrs = [float(row["snr_a"]), float(row["snr_b"])] if snrs is None else list(snrs)
    extra = len(snrs) - 2
    speech = np.stack([sa, sb] + [sa] * extra)
    noise = np.stack([na, nb] + [na] * extra)
    level = float(row["speech_level_db"]) if level_db is None else level_db
    try:
        return mix_at_snr(speech, noise, np.asarray(snrs), speech_level_db=level)
    except ValueError as e:
        raise PairDataError(f"pair {row['pair_id']} ({row['speech_a']}, {row['noise_a']}): {e}") from None


# ------------------------------------------------------------------------------------------------ make_pairs


def _split_speech(sources: list[Source], val_fraction: float, seed: int) -> tuple[list[Source], list[Source]]:
    """Validation speech files (by file: none is shared between splits), drawn deterministically from the seed."""
    if val_fraction <= 0 or len(sources) < 2:
        return sources, []
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(len(sources))
    n_val = min(len(sources) - 1, max(2 if len(sources) >= 4 else 1, int(round(val_fraction * len(sources)))))
    val = {int(i) for i in order[:n_val]}
    return ([s for i, s in enumerate(sources) if i not in val], [s for i, s in enumerate(sources) if i in val])


def make_pairs(
    speech_dirs,
    noise_dirs,
    out_dir,
    *,
    num_pairs: int,
    jnd_db: float = 3.0,
    snr_min: float = -5.0,
    snr_max: float = 20.0,
    seconds: float = 4.0,
    sample_rate: int = SAMPLE_RATE,
    seed: int = 0,
    val_fraction: float = 0.05,
    pairing: str = DEFAULT_PAIRING,
    write_audio: bool = False,
    workers: int = 0,
    level_db: tuple[float, float] = LEVEL_RANGE_DB,
    progress=None,
) -> dict:
    """Draw ``num_pairs`` JND pairs and write ``pairs.csv`` + ``pairs.json`` (and FLACs with ``write_audio``).

    Deterministic for a given seed, whatever ``workers``. Speech shorter than the crop is skipped (reported);
    noise shorter than the crop is looped; silent speech or noise crops are redrawn (counted). Returns the
    summary that is also stored in ``pairs.json``. ``progress(done, total)`` is called as pairs are drawn.
    """
    t0 = time.time()
    if pairing not in PAIRINGS:
        raise ValueError(f"--pairing must be one of {', '.join(PAIRINGS)}, not {pairing!r}")
    if num_pairs < 1:
        raise ValueError("--num-pairs must be at least 1")
    if not snr_min < snr_max:
        raise ValueError(f"--snr-min ({snr_min}) must be below --snr-max ({snr_max})")
    if jnd_db < 0 or seconds <= 0 or not 0 <= val_fraction < 1:
        raise ValueError("--jnd-db must be ≥ 0, --seconds > 0 and --val-fraction in [0, 1)")
    out_dir = Path(out_dir)
    skipped: list[str] = []
    speech_all = probe_sources(discover_audio(speech_dirs), skipped)
    too_short = [s for s in speech_all if s.duration_s < seconds]
    skipped += [f"{s.path}: speech shorter than the {seconds:g} s crop ({s.duration_s:.2f} s)" for s in too_short]
    speech_ok = [s for s in speech_all if s.duration_s >= seconds]
    noise = probe_sources(discover_audio(noise_dirs), skipped)
    if not speech_ok:
        raise ValueError(
            f"no usable speech in {', '.join(map(str, speech_dirs))} "
            f"({len(speech_all)} audio files, {len(too_short)} shorter than {seconds:g} s)"
        )
    if not noise:
        raise ValueError(f"no usable noise audio in {', '.join(map(str, noise_dirs))}")
    train, val = _split_speech(speech_ok, val_fraction, seed)
    n_val = int(round(num_pairs * val_fraction)) if val else 0
    tasks = [("train", 0, i) for i in range(num_pairs - n_val)] + [
        ("val", 1, i) for i in range(num_pairs - n_val, num_pairs)
    ]
    ctx = _DrawContext(
        {"train": train, "val": val},
        noise,
        seconds,
        sample_rate,
        jnd_db,
        snr_min,
        snr_max,
        tuple(level_db),
        seed,
        pairing,
    )
    rows, counts = [], {"silent_speech_crops": 0, "silent_noise_crops": 0, "unreadable": 0}

    def consume(results):
        for i, (row, c) in enumerate(results, 1):
            for k, v in c.items():
                counts[k] += v
            if row is not None:
                rows.append(row)
            if progress is not None and (i % 256 == 0 or i == len(tasks)):
                progress(i, len(tasks))

    if workers > 0:
        with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers, _init_worker, (ctx,)) as pool:
            consume(pool.imap(_draw_pair, tasks, chunksize=64))
    else:
        _init_worker(ctx)
        consume(map(_draw_pair, tasks))
    if not rows:
        raise ValueError("no pair could be drawn: every speech or noise crop was silent or unreadable")
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    out_dir.mkdir(parents=True, exist_ok=True)
    if write_audio:
        _write_audio(df, out_dir, sample_rate, workers)
    manifest = out_dir / MANIFEST_NAME
    df.to_csv(manifest, index=False)
    pair_s = 2 * seconds * len(df)
    summary = {
        "pairs": len(df),
        "train_pairs": int((df.split == "train").sum()),
        "val_pairs": int((df.split == "val").sum()),
        "dropped_pairs": num_pairs - len(df),
        "hours": round(pair_s / 3600, 3),
        "size_gb_as_16bit": round(pair_s * sample_rate * 2 / 1e9, 3),
        "manifest": str(manifest),
        "manifest_bytes": manifest.stat().st_size,
        "settings": {
            "pairing": pairing,
            "jnd_db": jnd_db,
            "snr_min": snr_min,
            "snr_max": snr_max,
            "seconds": seconds,
            "sample_rate": sample_rate,
            "seed": seed,
            "val_fraction": val_fraction,
            "speech_level_db": list(level_db),
            "write_audio": write_audio,
            "num_pairs": num_pairs,
        },
        "sources": {
            "speech_dirs": [str(d) for d in speech_dirs],
            "noise_dirs": [str(d) for d in noise_dirs],
            "speech_files": len(speech_all),
            "speech_used": len(speech_ok),
            "speech_train_files": len(train),
            "speech_val_files": len(val),
            "noise_files": len(noise),
        },
        "skipped": {**counts, "speech_too_short": len(too_short), "files": skipped[:200]},
        "seconds_taken": round(time.time() - t0, 2),
    }
    (out_dir / SETTINGS_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _render_and_write(args) -> None:
    row, path_a, path_b, sample_rate = args
    mix = render_pair(row, _READER)
    sf.write(path_a, mix[0], sample_rate, subtype="PCM_16")
    sf.write(path_b, mix[1], sample_rate, subtype="PCM_16")


def _write_audio(df: pd.DataFrame, out_dir: Path, sample_rate: int, workers: int) -> None:
    """Materialise each pair as ``audio/<split>/<pair_id>_a.flac`` and ``_b.flac`` (16-bit) and record the paths."""
    stem = AUDIO_DIR + "/" + df.split + "/" + df.pair_id.map("{:07d}".format)
    df["audio_a"], df["audio_b"] = stem + "_a.flac", stem + "_b.flac"
    for split in df.split.unique():
        (out_dir / AUDIO_DIR / split).mkdir(parents=True, exist_ok=True)
    jobs = [
        (row, str(out_dir / row["audio_a"]), str(out_dir / row["audio_b"]), sample_rate)
        for row in df.to_dict("records")
    ]
    ctx = _DrawContext({}, [], 0.0, sample_rate, 0.0, 0.0, 0.0, (0.0, 0.0), 0, "")
    if workers > 0:
        with mp.get_context("fork").Pool(workers, _init_worker, (ctx,)) as pool:
            for _ in pool.imap_unordered(_render_and_write, jobs, chunksize=16):
                pass
    else:
        _init_worker(ctx)
        for job in jobs:
            _render_and_write(job)


# ------------------------------------------------------------------------------------------------ loading


def read_manifest(pairs_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """``pairs.csv`` and ``pairs.json`` of a pairs folder; one-line errors for missing or malformed ones."""
    pairs_dir = Path(pairs_dir)
    path = pairs_dir / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{pairs_dir}: not a pairs folder (no {MANIFEST_NAME}; run `jsqa make-pairs`)")
    try:
        df = pd.read_csv(path, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - pandas parser errors vary
        raise ValueError(f"{path}: unreadable manifest ({str(e).splitlines()[0]})") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a jsqa pairs manifest (missing columns {', '.join(missing[:4])})")
    settings_path = pairs_dir / SETTINGS_NAME
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    return df, settings


class PairSampler(torch.utils.data.Sampler):
    """Endless, resumable, rank-sharded sampler yielding ``(epoch, index)``.

    Each epoch is a permutation drawn from (seed, epoch); rank r takes every world-th item of it, the tail that
    does not divide evenly is dropped (as DistributedSampler with drop_last). ``start`` is the number of samples
    this rank has already consumed, so a resumed run sees exactly the data an uninterrupted run would."""

    def __init__(
        self, num_items: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True, start: int = 0
    ):
        if num_items < world_size:
            raise ValueError(f"only {num_items} training pairs for {world_size} ranks")
        self.num_items, self.seed, self.rank, self.world_size = num_items, seed, rank, world_size
        self.shuffle, self.start = shuffle, start
        self.per_rank = num_items // world_size

    def __iter__(self):
        epoch, skip = divmod(self.start, self.per_rank)
        while True:
            order = (
                np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
                if self.shuffle
                else np.arange(self.num_items)
            )
            mine = order[self.rank : self.per_rank * self.world_size : self.world_size]
            for i in mine[skip:]:
                yield epoch, int(i)
            epoch, skip = epoch + 1, 0


class PairDataset(torch.utils.data.Dataset):
    """Pairs mixed on the fly (in DataLoader workers) from manifest rows. Items are indexed by ``(epoch, index)``
    and every random choice is drawn from (seed, epoch, index), never from worker RNG state, so data is exactly
    reproducible and resumable whatever the number of workers.

    An item is ``{"wav": (V, T) float32, "snr": (V,)}`` with V = 2 (members a, b) or 3 with ``hard_negatives``
    (member a's speech and noise crop again, at an SNR ≥ 2·JND away). ``redraw_snr`` draws fresh SNRs and speech
    level for every epoch after the first (more variety from the same crops). Materialised audio (``audio_a``,
    ``audio_b`` from ``--write-audio``) is read instead of mixing when present and nothing is redrawn.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        root: str | Path | None = None,
        *,
        seed: int = 0,
        hard_negatives: bool = False,
        jnd_db: float = 3.0,
        snr_range: tuple[float, float] = (-5.0, 20.0),
        redraw_snr: bool = False,
        sample_rate: int = SAMPLE_RATE,
        cache_mb: float = 512.0,
    ):
        self.rows = manifest.reset_index(drop=True).to_dict("records")
        self.root = Path(root) if root is not None else None
        self.seed, self.hard_negatives, self.jnd_db = seed, hard_negatives, jnd_db
        self.snr_range, self.redraw_snr, self.sample_rate = tuple(snr_range), redraw_snr, sample_rate
        self.cache_mb = cache_mb
        self._reader: SourceReader | None = None  # created lazily, once per worker process

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def reader(self) -> SourceReader:
        if self._reader is None:
            self._reader = SourceReader(self.sample_rate, self.cache_mb)
        return self._reader

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        row = self.rows[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        snrs, level = [float(row["snr_a"]), float(row["snr_b"])], None
        if self.redraw_snr and epoch > 0:
            snrs, level = list(draw_snrs(rng, *self.snr_range, self.jnd_db)), float(rng.uniform(*LEVEL_RANGE_DB))
        if self.hard_negatives:
            snrs.append(hard_negative_snr(rng, snrs[0], self.jnd_db, *self.snr_range))
        if row.get("audio_a") and self.root is not None and level is None:
            wav = self._read_materialised(row, snrs)
        else:
            wav = render_pair(row, self.reader, snrs, level)
        return {"wav": torch.from_numpy(np.ascontiguousarray(wav)), "snr": torch.tensor(snrs, dtype=torch.float32)}

    def _read_materialised(self, row, snrs) -> np.ndarray:
        n = int(round(float(row["seconds"]) * self.sample_rate))
        views = []
        for rel in (row["audio_a"], row["audio_b"]):
            try:
                wav, _ = load_audio(self.root / rel, self.sample_rate)
            except AudioError as e:
                raise PairDataError(f"pair {row['pair_id']}: {e}") from None
            views.append(np.resize(wav, n))
        if len(snrs) > 2:  # the hard negative is mixed from the sources (it is not materialised)
            views.append(render_pair(row, self.reader, snrs)[2])
        return np.stack(views)


def worker_init(_worker_id: int) -> None:
    """DataLoader worker setup: one thread each (mixing is numpy; many workers × many threads thrash)."""
    torch.set_num_threads(1)
