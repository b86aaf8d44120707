"""Audio front end: read any file libsndfile reads, make it 16 kHz mono float32, check it, cut it into windows.

Everything that touches raw audio before the model goes through here, so that scoring, pair mixing,
fine-tuning and evaluation all see the same samples.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

SAMPLE_RATE = 16_000  # Hz: every model in jsqa works at this rate
WINDOW_S = 8.0  # long files are scored in windows of this length...
HOP_S = 4.0  # ...starting every HOP_S seconds; the file score is the mean of the window scores
MIN_DURATION_S = 1.0  # shorter files are not scored (an error row): their scores mean little (docs/scoring.md)
BLOCK_S = 4.0  # files are read in blocks of about this length, so memory does not grow with file length
SILENCE_PEAK = 1e-4  # peak |x| below this counts as silent (digital zero or near)
CLIP_LEVEL = 0.999  # |x| at or above this counts as full scale
CLIP_FRACTION = 1e-3  # warn when more than this fraction of samples sits at full scale

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64")

# libsndfile's log says "data : 96000 (should be 101)" when a chunk holds less than its header promises
_SHORT_CHUNK = re.compile(r"^(?:data|SSND|ds64)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


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
    duration_s: float  # of the audio that could be decoded (less than the header says when truncated)
    sample_rate: int  # of the file, before resampling
    channels: int
    warnings: list[str] = field(default_factory=list)


def read_problem(path: str | Path, err: BaseException) -> str:
    """Why ``path`` could not be opened, in a few words, from the exception that opening it raised."""
    if isinstance(err, PermissionError) or getattr(err, "errno", None) in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if isinstance(err, IsADirectoryError):
        return "is a directory, not an audio file"
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, OSError) and not isinstance(err, sf.LibsndfileError):
        return f"cannot read ({err.strerror or err})"
    try:
        if Path(path).stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    reason = str(err).split(":")[-1].strip() or "unknown error"
    return f"not a readable audio file ({reason})"


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


class BlockResampler:
    """Resample a signal that arrives in blocks, giving the samples that resampling it whole gives.

    torchaudio's resampler turns every ``o`` input samples into ``n`` output samples (``o/n`` is the rate ratio in
    lowest terms), each output reading at most ``width`` input samples beyond its own span. Each block is therefore
    resampled with torchaudio together with ``context`` samples on either side (``width`` or more, a whole number
    of ``o``) and only the output of its own span is kept; the file's true start and end are handled by
    torchaudio's own zero padding, as for the whole file.
    """

    def __init__(self, orig_sr: int, new_sr: int = SAMPLE_RATE, block: int = 65_536):
        self.same = orig_sr == new_sr
        g = math.gcd(orig_sr, new_sr)
        self.o, self.n = orig_sr // g, new_sr // g
        self.resampler = None if self.same else _resampler(orig_sr, new_sr)
        self.context = 0 if self.same else self.o * math.ceil(self.resampler.width / self.o)
        self.block = self.o * max(1, math.ceil(block / self.o))
        self.buf = np.zeros(0, np.float32)
        self.buf_start = 0  # input index of buf[0]
        self.next = 0  # input index where the next block to resample starts (a multiple of o)

    def _resample(self, seg_start: int, seg_end: int, keep_from: int, keep_to: int | None) -> np.ndarray:
        seg = self.buf[seg_start - self.buf_start : seg_end - self.buf_start]
        out = resample(seg, self.o, self.n)
        a = (keep_from - seg_start) // self.o * self.n
        return out[a:] if keep_to is None else out[a : a + (keep_to - keep_from) // self.o * self.n]

    def push(self, x: np.ndarray) -> np.ndarray:
        """Feed input samples; returns the output samples that are now final."""
        if self.same:
            return x
        self.buf = np.concatenate([self.buf, x]) if len(self.buf) else np.asarray(x, np.float32)
        end = self.buf_start + len(self.buf)
        outs = []
        while self.next + self.block + self.context <= end:
            seg_start = max(0, self.next - self.context)
            outs.append(
                self._resample(seg_start, self.next + self.block + self.context, self.next, self.next + self.block)
            )
            self.next += self.block
        drop = max(0, self.next - self.context) - self.buf_start
        if drop > 0:
            self.buf, self.buf_start = self.buf[drop:], self.buf_start + drop
        return np.concatenate(outs) if outs else np.zeros(0, np.float32)

    def finish(self) -> np.ndarray:
        """The output samples still held back, once the input has ended."""
        if self.same or self.buf_start + len(self.buf) <= self.next:
            return np.zeros(0, np.float32)
        out = self._resample(max(0, self.next - self.context), self.buf_start + len(self.buf), self.next, None)
        self.next = self.buf_start + len(self.buf)
        return out


def to_mono(data: np.ndarray, channel: int | None = None) -> np.ndarray:
    """(frames, channels) → (frames,): the mean of the channels, or the one ``channel`` (0-based)."""
    if data.ndim == 1:
        return data
    if channel is not None:
        if not 0 <= channel < data.shape[1]:
            raise ValueError(f"channel {channel} requested but the file has {data.shape[1]} channel(s)")
        return np.ascontiguousarray(data[:, channel])
    return data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else np.ascontiguousarray(data[:, 0])


class ContentChecks:
    """Silence, clipping and non-finite samples, counted block by block (no full-length temporaries)."""

    def __init__(self):
        self.samples, self.peak, self.clipped, self.non_finite = 0, 0.0, 0, 0

    def clean(self, block: np.ndarray) -> np.ndarray:
        """Count non-finite samples of a source block and return it with them set to 0."""
        finite = np.isfinite(block)
        if finite.all():
            return block
        self.non_finite += int(block.size - np.count_nonzero(finite))
        return np.where(finite, block, 0.0).astype(np.float32)

    def update(self, block: np.ndarray) -> None:
        """Count a block of the (resampled) signal."""
        if len(block):
            mag = np.abs(block)
            self.peak = max(self.peak, float(mag.max()))
            self.clipped += int(np.count_nonzero(mag >= CLIP_LEVEL))
            self.samples += len(block)

    def warnings(self, sample_rate: int) -> list[str]:
        warnings = []
        duration = self.samples / sample_rate
        if duration < MIN_DURATION_S:
            warnings.append(f"short ({duration:.2f} s < {MIN_DURATION_S:g} s)")
        if self.peak < SILENCE_PEAK:
            warnings.append("silent" if self.peak == 0.0 else f"near-silent (peak {self.peak:.1e})")
        clipped = self.clipped / self.samples if self.samples else 0.0
        if clipped > CLIP_FRACTION:
            warnings.append(f"clipped ({100 * clipped:.1f}% of samples at full scale)")
        if self.non_finite:
            warnings.append(f"non-finite samples ({self.non_finite} set to 0)")
        return warnings


def check_audio(wav: np.ndarray, sample_rate: int) -> list[str]:
    """Warnings (not errors) about content: short, silent, clipped."""
    checks = ContentChecks()
    checks.update(wav)
    return checks.warnings(sample_rate)


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


class AudioStream:
    """A file read block by block as mono float32 at ``sample_rate``: ``for block in AudioStream(path): ...``.

    Opening raises :class:`AudioError` (one line naming the file) for files that cannot be used. Iterating reads
    about ``block_s`` seconds at a time, so memory does not depend on the file's length; the blocks joined are what
    :func:`load_audio` returns. Once iterated, ``info`` holds the file's properties and its warnings: content
    (short, silent, clipped, non-finite) and ``truncated`` when the file holds less audio than its header promises
    or the decoder stops early. A file with nothing decodable raises :class:`AudioError` while iterating.
    """

    def __init__(
        self,
        path: str | Path,
        sample_rate: int = SAMPLE_RATE,
        channel: int | None = None,
        start_s: float = 0.0,
        duration_s: float | None = None,
        block_s: float = BLOCK_S,
    ):
        self.path, self.sample_rate, self.channel = Path(path), sample_rate, channel
        if self.path.is_dir():
            raise AudioError(path, "is a directory, not an audio file")
        try:
            with open(self.path, "rb"):  # the OS says why a file cannot be opened better than libsndfile does
                pass
            self.file = sf.SoundFile(str(self.path))
        except (OSError, RuntimeError) as e:  # LibsndfileError is a RuntimeError
            raise AudioError(path, read_problem(path, e)) from None
        sr, self.channels, frames = self.file.samplerate, self.file.channels, self.file.frames
        if channel is not None and not 0 <= channel < self.channels:
            self.file.close()
            raise AudioError(path, f"channel {channel} requested but the file has {self.channels} channel(s)")
        self.file_sr, self.frames = sr, frames
        self.start = min(round(start_s * sr), frames)
        left = frames - self.start
        self.target = left if duration_s is None else min(round(duration_s * sr), left)
        self.block = max(1, int(block_s * sr))
        self.info: AudioInfo | None = None

    def _promised_frames(self) -> int | None:
        """Frames the header promises when libsndfile found less data than that, else None."""
        m = _SHORT_CHUNK.search(self.file.extra_info or "")
        promised, present = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        if not (self.frames and 0 < present < promised):
            return None
        bytes_per_frame = max(1, round(present / self.frames))  # a torn last frame leaves a remainder
        return promised // bytes_per_frame

    def _salvage(self, f: sf.SoundFile, position: int, want: int, step: int = 1024) -> np.ndarray:
        """After a read that failed part-way, the frames before the failure, read again in small steps."""
        parts = []
        try:
            f.seek(position)
            while sum(len(p) for p in parts) < want:
                part = f.read(frames=min(step, want - sum(len(p) for p in parts)), dtype="float32", always_2d=True)
                if not len(part):
                    break
                parts.append(part)
        except RuntimeError:
            pass
        return np.concatenate(parts) if parts else np.zeros((0, self.channels), np.float32)

    def __iter__(self) -> Iterator[np.ndarray]:
        path, sr = self.path, self.file_sr
        resampler = BlockResampler(sr, self.sample_rate, self.block)
        checks = ContentChecks()
        read, stopped = 0, None
        whole = self.start == 0 and self.target == self.frames
        try:
            with self.file as f:
                if self.start:
                    f.seek(self.start)
                while read < self.target:
                    # frames=-1 fails on files libsndfile cannot seek (e.g. GSM 6.10 WAV): ask for known counts
                    want = min(self.block, self.target - read)
                    try:
                        data = f.read(frames=want, dtype="float32", always_2d=True)
                    except RuntimeError as e:  # LibsndfileError, e.g. "flac decoder lost sync"
                        stopped = str(e).split(":")[-1].strip().rstrip(".") or "decoder error"
                        data = self._salvage(f, self.start + read, want)  # the failed read returned nothing
                    got = data.shape[0]
                    read += got
                    if got:
                        out = resampler.push(checks.clean(to_mono(data, self.channel)))
                        checks.update(out)
                        if len(out):
                            yield out
                    if got < want or stopped is not None:
                        break
                promised = self._promised_frames() if whole and read == self.frames else None
        except (TypeError, ValueError) as e:
            raise AudioError(path, f"could not decode audio ({e})") from None
        out = resampler.finish()
        checks.update(out)
        if read == 0:
            if stopped is None and (self.frames == 0 or self.target == 0):
                raise AudioError(path, "no audio samples (0 frames)")
            raise AudioError(path, f"truncated: nothing decodable ({stopped or 'no audio data'})")
        warnings = []
        if stopped is not None or read < self.target:
            warnings.append(
                f"truncated ({stopped or 'audio ends'} at {(self.start + read) / sr:.2f} s; "
                f"the header promises {(self.start + self.target) / sr:.2f} s)"
            )
        elif promised is not None:
            warnings.append(f"truncated (the file holds {read / sr:.2f} s; its header promises {promised / sr:.2f} s)")
        self.info = AudioInfo(
            str(path),
            read / sr if whole else self.frames / sr,
            sr,
            self.channels,
            warnings + checks.warnings(self.sample_rate),
        )
        if len(out):
            yield out


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
    (short, silent, clipped, non-finite samples, truncated) are returned as ``info.warnings``. Reads through
    :class:`AudioStream`, so the samples are those that ``jsqa score`` scores.
    """
    stream = AudioStream(path, sample_rate, channel, start_s, duration_s)
    blocks = list(stream)
    wav = np.concatenate(blocks) if len(blocks) > 1 else blocks[0] if blocks else np.zeros(0, np.float32)
    return np.ascontiguousarray(wav, dtype=np.float32), stream.info


def window_bounds(
    num_samples: int, sample_rate: int = SAMPLE_RATE, window_s: float = WINDOW_S, hop_s: float = HOP_S
) -> list[tuple[int, int]]:
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
