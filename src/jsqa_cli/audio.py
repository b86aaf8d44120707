"""Audio front end: read any file libsndfile reads, make it 16 kHz mono float32, check it, cut it into windows.

Everything that touches raw audio before the model goes through here, so that scoring, pair mixing,
fine-tuning and evaluation all see the same samples.
"""

from __future__ import annotations

import functools
import os
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

SAMPLE_RATE = 16_000  # Hz: every model in jsqa works at this rate
WINDOW_S = 8.0  # long files are scored in windows of this length...
HOP_S = 4.0  # ...starting every HOP_S seconds; the file score is the mean of the window scores
MIN_DURATION_S = 0.5  # shorter files are scored, with a warning
SILENCE_PEAK = 1e-4  # peak |x| below this counts as silent (digital zero or near)
CLIP_LEVEL = 0.999  # |x| at or above this counts as full scale
CLIP_FRACTION = 1e-3  # warn when more than this fraction of samples sits at full scale

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64")


class AudioError(Exception):
    """A file that cannot be used as audio. ``str(err)`` is a one-line message naming the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class AudioInfo:
    """What was read: the source file's properties and any warnings about its content."""

    path: str
    duration_s: float
    sample_rate: int  # of the file, before resampling
    channels: int
    warnings: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=32)
def _resampler(orig_sr: int, new_sr: int) -> torchaudio.transforms.Resample:
    # The sinc kernel is built once per rate pair and reused for every file at that rate.
    return torchaudio.transforms.Resample(orig_sr, new_sr)


def resample(wav: np.ndarray | torch.Tensor, orig_sr: int, new_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a 1-D signal with torchaudio's (cached) band-limited sinc resampler."""
    x = torch.as_tensor(np.ascontiguousarray(wav), dtype=torch.float32)
    if orig_sr == new_sr:
        return x.numpy()
    with torch.inference_mode():
        return _resampler(int(orig_sr), int(new_sr))(x).numpy()


def to_mono(data: np.ndarray, channel: int | None = None) -> np.ndarray:
    """(frames, channels) → (frames,): the mean of the channels, or the one ``channel`` (0-based)."""
    if data.ndim == 1:
        return data
    if channel is not None:
        if not 0 <= channel < data.shape[1]:
            raise ValueError(f"channel {channel} requested but the file has {data.shape[1]} channel(s)")
        return np.ascontiguousarray(data[:, channel])
    return data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else np.ascontiguousarray(data[:, 0])


def check_audio(wav: np.ndarray, sample_rate: int) -> list[str]:
    """Warnings (not errors) about content: too short, silent, clipped."""
    warnings = []
    duration = len(wav) / sample_rate
    if duration < MIN_DURATION_S:
        warnings.append(f"short ({duration:.2f} s < {MIN_DURATION_S} s)")
    peak = float(np.max(np.abs(wav))) if len(wav) else 0.0
    if peak < SILENCE_PEAK:
        warnings.append("silent" if peak == 0.0 else f"near-silent (peak {peak:.1e})")
    clipped = float(np.mean(np.abs(wav) >= CLIP_LEVEL)) if len(wav) else 0.0
    if clipped > CLIP_FRACTION:
        warnings.append(f"clipped ({100 * clipped:.1f}% of samples at full scale)")
    return warnings


def find_audio(paths: Iterable[str | os.PathLike], extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """Files and folders (searched recursively) → audio files, in a deterministic order without duplicates.

    Files named on the command line are kept whatever their extension (a bad one becomes an error row later);
    folders contribute the files whose extension (case-insensitive) is in ``extensions``, sorted by path.
    Arguments keep their order; a file reached twice (same resolved path) is kept once, at its first place.
    Raises FileNotFoundError naming a missing path.
    """
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    found: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in exts and f.is_file())
        elif p.exists():
            files = [p]
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
        for f in files:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                found.append(f)
    return found


def load_audio(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    channel: int | None = None,
    start_s: float = 0.0,
    duration_s: float | None = None,
) -> tuple[np.ndarray, AudioInfo]:
    """Read ``path`` (any format libsndfile reads) as mono float32 at ``sample_rate``.

    Channels are averaged unless ``channel`` picks one. ``start_s``/``duration_s`` read only a part of the
    file. Raises :class:`AudioError` with a one-line message for files that cannot be used; content problems
    (short, silent, clipped, non-finite samples) are returned as ``info.warnings``.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    try:
        with sf.SoundFile(str(path)) as f:
            sr, channels, frames = f.samplerate, f.channels, f.frames
            start = int(round(start_s * sr))
            if start:
                f.seek(min(start, frames))
            # frames=-1 fails on files libsndfile cannot seek (e.g. GSM 6.10 WAV): ask for the known count
            n = frames - min(start, frames) if duration_s is None else int(round(duration_s * sr))
            data = f.read(frames=n, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        if path.stat().st_size == 0:
            raise AudioError(path, "empty file (0 bytes)") from None
        reason = str(e).split(":")[-1].strip() or "unknown error"
        raise AudioError(path, f"not a readable audio file ({reason})") from None
    except (RuntimeError, TypeError, ValueError) as e:
        raise AudioError(path, f"could not decode audio ({e})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "no audio samples (0 frames)")
    try:
        wav = to_mono(data, channel)
    except ValueError as e:
        raise AudioError(path, str(e)) from None
    del data
    warnings = []
    finite = np.isfinite(wav)
    if not finite.all():
        warnings.append(f"non-finite samples ({int((~finite).sum())} set to 0)")
        wav = np.where(finite, wav, 0.0).astype(np.float32)
    wav = resample(wav, sr, sample_rate)
    warnings = check_audio(wav, sample_rate) + warnings
    return wav, AudioInfo(str(path), frames / sr, sr, channels, warnings)


def window_bounds(num_samples: int, sample_rate: int = SAMPLE_RATE, window_s: float = WINDOW_S,
                  hop_s: float = HOP_S) -> list[tuple[int, int]]:
    """Sample ranges of the scoring windows: one window for short files, else full windows every hop,
    with a last window aligned to the end so that the tail is covered."""
    win, hop = int(round(window_s * sample_rate)), int(round(hop_s * sample_rate))
    if num_samples <= win:
        return [(0, num_samples)]
    starts = list(range(0, num_samples - win + 1, hop))
    if starts[-1] + win < num_samples:
        starts.append(num_samples - win)
    return [(s, s + win) for s in starts]


def num_windows(num_samples: int, **kwargs) -> int:
    return len(window_bounds(num_samples, **kwargs))


def pad_batch(waves: list[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D signals with zeros into a (B, T) batch; also returns their lengths."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    batch = torch.zeros(len(waves), int(lengths.max()) if len(waves) else 0)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.as_tensor(w)
    return batch, lengths


def rms_db(wav: np.ndarray | torch.Tensor) -> float:
    """Root-mean-square level in dB full scale (−inf for digital silence)."""
    x = np.asarray(wav, dtype=np.float64)
    ms = float(np.mean(x * x)) if x.size else 0.0
    return 10 * math.log10(ms) if ms > 0 else float("-inf")
