"""Scoring: find audio files, read them in blocks in parallel, cut the blocks into windows as they arrive, batch the
windows by length through the model, and turn window scores into file scores (file MOS = mean of its window scores).
A model with P.835 heads (``sig``, ``bak``) gets them from the same forward pass, averaged over windows the same way.

    paths ──► audio.find_audio ──► shard ──► DataLoader (workers: audio.AudioStream, blocks of BLOCK_S s)
          ──► windows cut as blocks arrive ──► pools sorted by length ──► batches of ``batch_size`` windows
          ──► model ──► per-file rows, yielded as each file finishes

One engine (:func:`_score_stream`) serves every entry point, so ``score_waveforms`` (arrays), ``score_files``
(paths → DataFrame) and ``jsqa score`` (paths → CSV/JSONL, via :func:`score_to_file`) give the same numbers for the
same inputs in the same order. No file is ever held whole: memory is bounded by the pool of windows
(``POOL_BATCHES * batch_size`` windows) plus a window and a block per file being read, whatever the files' lengths.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jsqa_cli.audio import (
    BLOCK_S,
    HOP_S,
    MIN_DURATION_S,
    SAMPLE_RATE,
    WINDOW_S,
    AudioError,
    AudioInfo,
    AudioStream,
    find_audio,  # noqa: F401  (public API: scoring.find_audio, as in the docs)
    pad_batch,
)
from jsqa_cli.model import P835_HEADS
from jsqa_cli.writers import open_writer, read_done_paths

if TYPE_CHECKING:  # pandas is imported where a table is made: not needed before the first row
    import pandas as pd

COLUMNS = ["path", "mos", "duration_s", "sample_rate", "channels", "segments", "model", "warnings", "error"]
SEGMENT_COLUMNS = ["path", "start_s", "end_s", "mos"]  # a MOS-only model's; see segment_columns_for
POOL_BATCHES = 8  # windows shorter than a window's length are sorted by length in pools of POOL_BATCHES * batch_size
BLOCK_S_SAMPLES = int(BLOCK_S * SAMPLE_RATE)  # arrays are cut into windows a block at a time, as files are read
MOS_DECIMALS = 4  # rows carry MOS rounded to this many decimals (batch composition moves scores by < 1e-5)


# ------------------------------------------------------------------------------------------------ outputs


def reported_outputs(model) -> list[str]:
    """The scores scoring reports for ``model``: ``mos``, then the P.835 heads it has (``sig``, ``bak``, in that
    order). Other extra heads (training aids such as ``aux_*``) are never reported."""
    extra = getattr(getattr(model, "config", None), "extra_heads", None) or []
    return ["mos", *(h for h in P835_HEADS if h in extra)]


def columns_for(outputs: Sequence[str] = ("mos",)) -> list[str]:
    """Row columns for a model reporting ``outputs``: COLUMNS with the extra scores after ``mos``."""
    return ["path", *outputs, *COLUMNS[2:]]


def segment_columns_for(outputs: Sequence[str] = ("mos",)) -> list[str]:
    """Window-row columns for a model reporting ``outputs``: SEGMENT_COLUMNS with the extra scores after ``mos``."""
    return [*SEGMENT_COLUMNS[:-1], *outputs]


def _selected(model, outputs) -> list[str]:
    """``outputs`` of the Python API → the output names to compute: None → ["mos"]; "all" → reported_outputs;
    a name or list of names → those (any of ``model.config.outputs``, training heads included)."""
    if outputs is None:
        return ["mos"]
    if isinstance(outputs, str) and outputs == "all":
        return reported_outputs(model)
    names = [outputs] if isinstance(outputs, str) else list(outputs)
    have = model.config.outputs
    unknown = [n for n in names if n not in have]
    if unknown:
        raise ValueError(f"outputs: the model has no {unknown[0]!r} score (it gives {', '.join(have)})")
    if not names:
        raise ValueError("outputs: name at least one score, e.g. ['mos', 'sig'], or pass outputs='all'")
    return list(dict.fromkeys(names))


def _head_indices(model, names: Sequence[str]) -> list[int]:
    return [model.config.outputs.index(n) for n in names]


# ------------------------------------------------------------------------------------------------- shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (0-based K, like torchrun's RANK) → (K, N); ValueError with a one-line message otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. --shard 0/4")
    return int(m.group(1)), int(m.group(2))


def shard_paths(paths: Sequence, index: int, count: int) -> list:
    """The ``index``-th of ``count`` disjoint, deterministic, balanced shards (round robin over the ordered list)."""
    return list(paths[index::count])


def torchrun_shard() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when launched by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def part_path(output: str | Path, index: int, count: int) -> Path:
    """``scores.csv`` → ``scores.part-00002-of-00004.csv`` (the part written by shard 2 of 4)."""
    output = Path(output)
    return output.with_name(f"{output.stem}.part-{index:05d}-of-{count:05d}{output.suffix}")


def find_parts(output: str | Path) -> tuple[list[Path], int]:
    """The part files of ``output`` → (parts sorted by index, N). ValueError if none, mixed N, or some missing."""
    output = Path(output)
    pattern = re.compile(re.escape(output.stem) + r"\.part-(\d{5})-of-(\d{5})" + re.escape(output.suffix) + "$")
    parts: dict[int, dict[int, Path]] = {}
    for f in (output.parent if str(output.parent) else Path(".")).iterdir():
        m = pattern.match(f.name)
        if m:
            parts.setdefault(int(m.group(2)), {})[int(m.group(1))] = f
    if not parts:
        raise ValueError(f"{output}: no part files {part_path(output, 0, 1).name.replace('00000-of-00001', '*-of-*')}")
    if len(parts) > 1:
        raise ValueError(f"{output}: part files of different shard counts ({', '.join(map(str, sorted(parts)))})")
    count, found = next(iter(parts.items()))
    missing = [i for i in range(count) if i not in found]
    if missing:
        raise ValueError(f"{output}: missing part(s) {', '.join(map(str, missing[:5]))} of {count}")
    return [found[i] for i in range(count)], count


def merge_parts(output: str | Path, sort_by_path: bool = True) -> pd.DataFrame:
    """Merge ``output``'s part files (all N of them) into ``output`` (CSV or JSONL, by extension), rows sorted by
    path. The parts are kept. Returns the merged table."""
    import pandas as pd

    output = Path(output)
    parts, _ = find_parts(output)
    jsonl = output.suffix.lower() == ".jsonl"
    # Values are copied exactly as the parts wrote them: strings for CSV, parsed JSON records for JSONL.
    if jsonl:
        per_part = [
            [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()] for p in parts
        ]
        _same_columns(output, [(p, list(recs[0])) for p, recs in zip(parts, per_part) if recs])
        records = [r for recs in per_part for r in recs]
        df = pd.DataFrame(records, columns=list(records[0]) if records else COLUMNS)
        if sort_by_path:
            records.sort(key=lambda r: str(r.get("path", "")))
    else:
        named = [(p, pd.read_csv(p, dtype=str, keep_default_na=False)) for p in parts if p.stat().st_size]
        _same_columns(output, [(p, list(f.columns)) for p, f in named])
        frames = [f for _, f in named]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    if sort_by_path and "path" in df:
        df = df.sort_values("path", kind="stable", ignore_index=True)
    tmp = output.with_name(output.name + ".tmp")
    if jsonl:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        df.to_csv(tmp, index=False)
    os.replace(tmp, output)
    return df


def _same_columns(output: Path, columns: list[tuple[Path, list[str]]]) -> None:
    """Parts written by models with different outputs (say one with sig/bak, one without) do not merge."""
    for part, cols in columns[1:]:
        if cols != columns[0][1]:
            first, first_cols = columns[0]
            raise ValueError(
                f"{output}: part files differ in columns ({first.name}: {', '.join(first_cols)}; {part.name}: "
                f"{', '.join(cols)}); were they scored with different models?"
            )


# ----------------------------------------------------------------------------------------- decoding (workers)


def read_pieces(
    index: int, path: str | os.PathLike, channel: int | None = None, min_duration_s: float = MIN_DURATION_S
) -> Iterator[dict]:
    """One file → its 16 kHz mono audio in pieces of about ``audio.BLOCK_S`` seconds, the last one marked ``last``
    and carrying the file's :class:`~jsqa_cli.audio.AudioInfo`; or a single item with ``error`` set."""
    path = str(path)
    base = {"index": index, "path": path}
    prev, samples = None, 0
    try:
        stream = AudioStream(path, SAMPLE_RATE, channel=channel)
        for block in stream:
            if prev is not None:  # one piece held back, so that the last one can say it is the last
                yield {**base, "wave": prev, "last": False, "info": None, "error": None}
            prev, samples = block, samples + len(block)
        info = stream.info
        if prev is None or samples < round(min_duration_s * SAMPLE_RATE):  # one piece: BLOCK_S > MIN_DURATION_S
            warnings = [w for w in info.warnings if not w.startswith("short")]
            yield {
                **base,
                "wave": None,
                "last": True,
                "info": AudioInfo(path, info.duration_s, info.sample_rate, info.channels, warnings),
                "error": f"too short to score ({samples / SAMPLE_RATE:.2f} s < {min_duration_s:g} s)",
            }
            return
    except AudioError as e:
        yield {**base, "wave": None, "last": True, "info": None, "error": e.problem}
        return
    except Exception as e:  # noqa: BLE001 - a file that breaks a library must not stop the others
        yield {**base, "wave": None, "last": True, "info": None, "error": f"{type(e).__name__}: {e}"}
        return
    # Pieces cross the worker boundary as pickled arrays (a 4 s piece is 256 KiB). As torch tensors they would go
    # through shared memory, and the main process was measured to hold up to 300 MiB more on a 1-hour file.
    yield {**base, "wave": prev, "last": True, "info": info, "error": None}


class AudioPieces(IterableDataset):
    """Paths → :func:`read_pieces` of each, file after file. In DataLoader workers, worker k of W reads files k,
    k + W, ...; the loader takes one piece from each worker in turn, so the order is deterministic."""

    def __init__(
        self, paths: Sequence[str | os.PathLike], channel: int | None = None, min_duration_s: float = MIN_DURATION_S
    ):
        self.paths, self.channel, self.min_duration_s = list(paths), channel, min_duration_s

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        first, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for i in range(first, len(self.paths), step):
            yield from read_pieces(i, self.paths[i], self.channel, self.min_duration_s)


def _keep_one(item: dict) -> dict:  # collate for batch_size=None: keep the item (and its error) as it is
    return item


def _decoded(paths: Sequence, channel: int | None, workers: int) -> Iterator[dict]:
    if workers <= 0:
        return iter(AudioPieces(paths, channel))
    workers = min(workers, len(paths)) or 1
    loader = DataLoader(
        AudioPieces(paths, channel),
        batch_size=None,
        num_workers=workers,
        collate_fn=_keep_one,
        prefetch_factor=2,
        persistent_workers=False,
    )
    return iter(loader)


# ------------------------------------------------------------------------------------------------ the engine


class _Windows:
    """Cuts one file's audio, arriving in blocks, into the windows of :func:`audio.window_bounds` as they fill.
    Holds at most a window plus a block of audio; each window is a copy, so a block is not kept alive by it.
    (numpy, not torch: these small copies run in torch's thread pool otherwise, and wait on it when CPUs are busy.)"""

    def __init__(self, win: int, hop: int):
        self.win, self.hop = win, hop
        self.buf, self.buf_start = np.zeros(0, np.float32), 0  # the audio from sample buf_start on
        self.total, self.next, self.count, self.last_end = 0, 0, 0, 0

    def push(self, block: np.ndarray | torch.Tensor) -> list[tuple[int, int, np.ndarray]]:
        block = block.numpy() if torch.is_tensor(block) else np.asarray(block, np.float32)
        self.buf = np.concatenate([self.buf, block]) if len(self.buf) else block
        self.total += len(block)
        out = []
        while self.next + self.win <= self.total:
            a = self.next - self.buf_start
            out.append((self.next, self.next + self.win, self.buf[a : a + self.win].copy()))
            self.next += self.hop
        keep = max(self.buf_start, min(self.next, self.total - self.win))  # the last window may end at the end
        self.buf, self.buf_start = self.buf[keep - self.buf_start :], keep
        if out:
            self.count, self.last_end = self.count + len(out), out[-1][1]
        return out

    def finish(self) -> list[tuple[int, int, np.ndarray]]:
        if self.count == 0:  # shorter than a window: one window of its own length
            return [(0, self.total, self.buf.copy())] if self.total else []
        if self.last_end < self.total:  # a last window aligned to the end covers the tail
            return [(self.total - self.win, self.total, self.buf[-self.win :].copy())]
        return []


@dataclass
class _Pending:
    item: dict | None = None  # the file's last piece, once it has arrived
    bounds: list = field(default_factory=list)
    scores: list = field(default_factory=list)  # one row of scores per window (one per head computed)
    left: int = 0  # windows queued and not yet scored


@dataclass
class ScoreResult:
    """One finished input: its row (COLUMNS) and, for scored files, its window rows (SEGMENT_COLUMNS)."""

    index: int
    row: dict
    segments: list[dict] = field(default_factory=list)
    audio_s: float = 0.0


def prepare_model(model, device: str | torch.device | None = "auto"):
    """(model or name/folder/Hub id, device) → (JSQA model on its device, device). ``device`` auto/None keeps a
    given model where it is; names are loaded onto the resolved device."""
    from jsqa_cli.distributed import resolve_device, unwrap
    from jsqa_cli.model import JSQA, load_model

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")

    if model is None or isinstance(model, (str, os.PathLike)):
        dev = (
            resolve_device("auto" if device is None else str(device))
            if not isinstance(device, torch.device)
            else device
        )
        return load_model(model, device=dev), dev
    model = unwrap(model)
    if not isinstance(model, JSQA):
        raise TypeError(f"expected a JSQA model, a model name or a folder, got {type(model).__name__}")
    if device is None or device == "auto":
        return model, next(model.parameters()).device
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    return model.to(dev), dev


class _EvalMode:
    """Eval mode and inference mode for the duration; the model's training flag is restored afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.inference = torch.inference_mode()
        self.inference.__enter__()

    def __exit__(self, *exc):
        self.inference.__exit__(*exc)
        self.model.train(self.was_training)


def _run_windows(model, device, windows: list[np.ndarray], heads: Sequence[int] = (0,)) -> np.ndarray:
    """Windows → (B, len(heads)) scores, columns ``model.config.outputs[heads]``, from one forward pass. MOS alone
    takes the model's plain forward (the MOS head only); several heads read the one embedding."""
    wav, lengths = pad_batch(windows)
    wav, lengths = wav.to(device, non_blocking=True), lengths.to(device)
    if list(heads) == [0]:
        return model(wav, lengths).float().cpu().numpy()[:, None]
    scores = model.scores(wav, lengths)
    return scores[:, list(heads)].float().cpu().numpy()


def _score_stream(
    items: Iterable[dict],
    model,
    device,
    *,
    batch_size: int,
    window_s: float,
    hop_s: float,
    pool_windows: int | None = None,
    heads: Sequence[int] = (0,),
) -> Iterator[tuple[dict, list | None, np.ndarray | None]]:
    """Pieces of decoded audio → (last piece, window bounds, window scores (windows, len(heads))) as each file
    finishes; errors pass straight through. ``heads`` index ``model.config.outputs`` (0: MOS).

    An item is a piece of one file's 16 kHz audio (``wave``; ``last`` marks the file's last piece; ``index`` tells
    the files apart), or an ``error``. Windows are cut as the pieces arrive. Full-length windows run as soon as
    ``batch_size`` of them are there (sorting cannot save them any padding); shorter ones (files shorter than a
    window) collect into a pool, across files, and a full pool (or the end) is sorted by length and run in batches of
    ``batch_size``. So memory holds at most ``pool_windows + batch_size`` windows and one window plus one piece per
    file being read, whatever the files' lengths, and the batches depend only on the items' order and lengths, never
    on timing.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1 (got {batch_size})")
    pool_windows = pool_windows or POOL_BATCHES * batch_size
    win, hop = int(round(window_s * SAMPLE_RATE)), int(round(hop_s * SAMPLE_RATE))
    cutters: dict[int, _Windows] = {}
    pending: dict[int, _Pending] = {}
    queue: list[tuple[int, int, np.ndarray]] = []  # (item key, window number, window): windows shorter than win
    full: list[tuple[int, int, np.ndarray]] = []  # the same for full-length windows
    no_score = np.full(len(heads), math.nan)  # a window's row until it is scored

    def run(chunks: list) -> Iterator:
        for chunk in chunks:
            scores = _run_windows(model, device, [w for _, _, w in chunk], heads)
            for (key, j, _), s in zip(chunk, scores):
                p = pending.get(key)
                if p is None:  # the file failed after some of its windows were queued
                    continue
                p.scores[j] = s
                p.left -= 1
                if p.left == 0 and p.item is not None:
                    del pending[key]
                    yield p.item, p.bounds, np.asarray(p.scores, dtype=np.float64)

    def flush() -> Iterator:
        pool = sorted(queue + full, key=lambda q: q[2].shape[0])  # stable: equal lengths keep arrival order
        queue.clear()
        full.clear()
        yield from run(pool[start : start + batch_size] for start in range(0, len(pool), batch_size))

    for item in items:
        key = item["index"]
        if item.get("error") is not None:
            cutters.pop(key, None)
            pending.pop(key, None)
            yield item, None, None
            continue
        wave = item["wave"]
        wave = wave.numpy() if torch.is_tensor(wave) else np.ascontiguousarray(wave, dtype=np.float32)
        if wave.ndim != 1 or (wave.shape[0] == 0 and key not in cutters):
            raise ValueError(
                f"{item.get('path', key)}: expected a non-empty 1-D 16 kHz waveform, got shape {tuple(wave.shape)}"
            )
        cutter = cutters.setdefault(key, _Windows(win, hop))
        p = pending.setdefault(key, _Pending())
        last = item.get("last", True)
        step = BLOCK_S_SAMPLES  # a whole array (score_waveforms) is cut a block at a time, like a file
        for start in range(0, max(len(wave), 1), step):
            windows = cutter.push(wave[start : start + step])
            if last and start + step >= len(wave):
                windows += cutter.finish()
                del cutters[key]
                p.item = item
            for a, b, w in windows:
                (full if b - a == win else queue).append((key, len(p.bounds), w))
                p.bounds.append((a, b))
                p.scores.append(no_score)
                p.left += 1
            while len(full) >= batch_size:
                chunk = full[:batch_size]
                del full[:batch_size]
                yield from run([chunk])
        if p.item is not None and p.left == 0 and key in pending:  # every window already scored
            del pending[key]
            yield item, p.bounds, np.asarray(p.scores, dtype=np.float64)
        if len(queue) >= pool_windows:
            yield from flush()
    yield from flush()


def predict_windows(
    model,
    waves: Sequence[np.ndarray],
    *,
    batch_size: int = 16,
    device=None,
    window_s: float = WINDOW_S,
    hop_s: float = HOP_S,
    outputs: str | Sequence[str] | None = None,
) -> list[tuple[list[tuple[int, int]], np.ndarray | dict[str, np.ndarray]]]:
    """Window bounds (sample ranges) and window scores for each 16 kHz mono wave, in input order.

    The scores are a float32 array of window MOS; with ``outputs`` (``"all"``: every score the model reports,
    ``mos`` and its P.835 ``sig``/``bak``; or a list of names) a dict name → array of window scores instead.
    Windows of all waves are batched together, sorted by length, under ``torch.inference_mode`` (the model's
    training flag is restored afterwards). ``model`` is a JSQA model (or a name/folder for ``load_model``).
    """
    model, dev = prepare_model(model, device)
    names = _selected(model, outputs)
    out: list = [None] * len(waves)
    items = ({"index": i, "wave": w, "error": None} for i, w in enumerate(waves))
    with _EvalMode(model):
        for item, bounds, scores in _score_stream(
            items, model, dev, batch_size=batch_size, window_s=window_s, hop_s=hop_s, heads=_head_indices(model, names)
        ):
            scores = scores.astype(np.float32)
            out[item["index"]] = (
                bounds,
                scores[:, 0] if outputs is None else {n: scores[:, k] for k, n in enumerate(names)},
            )
    return out


def file_score(window_scores: np.ndarray) -> float:
    """A file's score: the mean of its window scores, rounded to MOS_DECIMALS (the same for every head)."""
    return round(float(np.mean(window_scores)), MOS_DECIMALS)


def score_waveforms(
    model,
    waves: Sequence[np.ndarray],
    *,
    batch_size: int = 16,
    device=None,
    window_s: float = WINDOW_S,
    hop_s: float = HOP_S,
    outputs: str | Sequence[str] | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """File scores (mean of window scores) for each 16 kHz mono wave: the numbers ``jsqa score`` writes.

    Returns an array of file MOS; with ``outputs="all"`` a dict of arrays, one per score the model reports
    (``{"mos": ..., "sig": ..., "bak": ...}`` for a model with P.835 heads, ``{"mos": ...}`` otherwise), or with a
    list of names (any of ``model.config.outputs``) a dict of those. All come from one forward pass per window.
    """
    model, dev = prepare_model(model, device)
    names = _selected(model, outputs)
    out = np.full((len(waves), len(names)), np.nan)
    items = ({"index": i, "wave": w, "error": None} for i, w in enumerate(waves))
    with _EvalMode(model):
        for item, _, scores in _score_stream(
            items, model, dev, batch_size=batch_size, window_s=window_s, hop_s=hop_s, heads=_head_indices(model, names)
        ):
            out[item["index"]] = [file_score(scores[:, k]) for k in range(len(names))]
    return out[:, 0] if outputs is None else {n: out[:, k] for k, n in enumerate(names)}


def iter_scores(
    paths: Sequence[str | os.PathLike],
    model=None,
    *,
    batch_size: int = 16,
    workers: int = 0,
    device: str | torch.device | None = "auto",
    channel: int | None = None,
    window_s: float = WINDOW_S,
    hop_s: float = HOP_S,
    segments: bool = False,
) -> Iterator[ScoreResult]:
    """Score ``paths`` (files), yielding a :class:`ScoreResult` as each file finishes (errors included).

    ``index`` is the position in ``paths``. Files decode in ``workers`` DataLoader processes (0: in this one).
    Rows carry every score the model reports (:func:`reported_outputs`: ``mos``, and ``sig``/``bak`` when the
    model has those heads), in the columns of :func:`columns_for`.
    """
    model, dev = prepare_model(model, device)
    name = getattr(model, "name", "") or ""
    names = reported_outputs(model)
    with _EvalMode(model):
        stream = _score_stream(
            _decoded(paths, channel, workers),
            model,
            dev,
            batch_size=batch_size,
            window_s=window_s,
            hop_s=hop_s,
            heads=_head_indices(model, names),
        )
        for item, bounds, scores in stream:
            info = item["info"]
            if item["error"] is not None:
                row = dict(
                    path=item["path"],
                    **dict.fromkeys(names, math.nan),
                    duration_s=round(info.duration_s, 3) if info else math.nan,
                    sample_rate=info.sample_rate if info else None,
                    channels=info.channels if info else None,
                    segments=0,
                    model=name,
                    warnings="; ".join(info.warnings) if info else "",
                    error=item["error"],
                )
                yield ScoreResult(item["index"], row)
                continue
            row = dict(
                path=item["path"],
                **{n: file_score(scores[:, k]) for k, n in enumerate(names)},
                duration_s=round(info.duration_s, 3),
                sample_rate=info.sample_rate,
                channels=info.channels,
                segments=len(bounds),
                model=name,
                warnings="; ".join(info.warnings),
                error="",
            )
            segs = (
                [
                    dict(
                        path=item["path"],
                        start_s=round(a / SAMPLE_RATE, 3),
                        end_s=round(b / SAMPLE_RATE, 3),
                        **{n: round(float(s[k]), MOS_DECIMALS) for k, n in enumerate(names)},
                    )
                    for (a, b), s in zip(bounds, scores)
                ]
                if segments
                else []
            )
            yield ScoreResult(item["index"], row, segs, info.duration_s)


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def score_files(
    paths: Sequence[str | os.PathLike],
    model=None,
    *,
    batch_size: int = 16,
    workers: int = 0,
    device: str | torch.device | None = "auto",
    channel: int | None = None,
    window_s: float = WINDOW_S,
    hop_s: float = HOP_S,
    progress: bool = False,
    segments: bool = False,
) -> pd.DataFrame:
    """Score audio files → DataFrame with COLUMNS, one row per input in input order; a model with P.835 heads
    adds ``sig`` and ``bak`` after ``mos`` (:func:`columns_for`).

    A file that cannot be read gets ``error`` set and its scores NaN; the others are scored. ``model`` is a JSQA
    instance (load it once and reuse it) or a bundled name / folder / Hub id for ``load_model``. Use
    :func:`find_audio` first to expand folders. With ``segments=True`` the window rows (SEGMENT_COLUMNS, with
    ``sig``/``bak`` likewise, in input order) are in ``df.attrs["segments"]``.
    """
    paths = list(paths)
    model, device = prepare_model(model, device)
    names = reported_outputs(model)
    rows: list = [None] * len(paths)
    seg_rows: list = [[] for _ in paths]
    results = iter_scores(
        paths,
        model,
        batch_size=batch_size,
        workers=workers,
        device=device,
        channel=channel,
        window_s=window_s,
        hop_s=hop_s,
        segments=segments,
    )
    with ScoreProgress(len(paths), enabled=progress) as bar:
        for r in results:
            rows[r.index], seg_rows[r.index] = r.row, r.segments
            bar.advance(r)
    df = _frame(rows, columns_for(names))
    if segments:
        df.attrs["segments"] = _frame([s for segs in seg_rows for s in segs], segment_columns_for(names))
    return df


# ----------------------------------------------------------------------------------------------- progress


class ScoreProgress:
    """Rich progress on stderr: files done/total, audio hours, × real time, ETA. A no-op when disabled."""

    def __init__(self, total: int, enabled: bool = True, description: str = "Scoring"):
        self.total, self.enabled, self.description = total, enabled, description
        self.audio_s, self.failed, self.start = 0.0, 0, time.perf_counter()
        self.progress = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console

            from jsqa_cli.progress import progress_bar

            self.progress = progress_bar(console=Console(stderr=True))
            self.progress.__enter__()
            self.task = self.progress.add_task(self.description, total=self.total, status="")
        return self

    def advance(self, result: ScoreResult) -> None:
        self.audio_s += result.audio_s
        self.failed += bool(result.row.get("error"))
        if self.progress is not None:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            status = f"{self.audio_s / 3600:.2f} h audio, {self.audio_s / elapsed:.0f}× real time"
            if self.failed:
                status += f", [red]{self.failed} failed[/]"
            self.progress.update(self.task, advance=1, status=status)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)


# --------------------------------------------------------------------------------------- scoring to a file


@dataclass
class ScoreRun:
    """What :func:`score_to_file` did: where rows went, how many were scored now, skipped (resume), failed."""

    output: str
    scored: int = 0
    failed: int = 0
    skipped: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    shard: tuple[int, int] | None = None
    # this run's scored files' scores, for the summary: {"mos": [...]} and "sig"/"bak" when the model has them
    scores: dict = field(default_factory=lambda: {"mos": []}, repr=False)

    @property
    def moss(self) -> list:
        """MOS of this run's scored files."""
        return self.scores["mos"]

    @property
    def realtime(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else float("nan")

    def summary(self) -> dict:
        """The same keys as :func:`summarize`, for the files scored in this run."""
        moss = np.asarray(self.moss, dtype=float)
        out = {
            "files": self.scored,
            "failed": self.failed,
            "mean_mos": float(np.mean(moss)) if len(moss) else math.nan,
            "median_mos": float(np.median(moss)) if len(moss) else math.nan,
        }
        for head in P835_HEADS:
            if head in self.scores:
                out[f"mean_{head}"] = float(np.mean(self.scores[head])) if self.scores[head] else math.nan
        return {**out, "audio_h": self.audio_s / 3600}


def score_to_file(
    paths: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    model=None,
    *,
    segments_path: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    batch_size: int = 16,
    workers: int = 0,
    device: str | torch.device | None = "auto",
    channel: int | None = None,
    window_s: float = WINDOW_S,
    hop_s: float = HOP_S,
    progress: bool = False,
    stdout=None,
    on_result: Callable[[ScoreResult], None] | None = None,
) -> ScoreRun:
    """Score ``paths`` into ``output`` (``.csv``, ``.jsonl`` or ``-`` for stdout), one row flushed per file.

    ``resume`` skips paths already in the output and appends; otherwise an existing output is refused unless
    ``overwrite``, and an output whose columns differ (written by a model with other outputs) is refused. With
    ``shard=(K, N)`` only the K-th of N shards is scored, into the part file ``part_path(output, K, N)`` (and
    likewise for the segments file); :func:`merge_parts` joins the parts. The columns are :func:`columns_for` the
    model's :func:`reported_outputs`.
    """
    from jsqa_cli.writers import check_output

    if shard is not None:
        if str(output) == "-":
            raise ValueError("sharded runs write part files: give -o scores.csv (or .jsonl), not stdout")
        paths = shard_paths(list(paths), *shard)
        output = part_path(output, *shard)
        segments_path = part_path(segments_path, *shard) if segments_path else None
    check_output(output, resume=resume, overwrite=overwrite)
    if segments_path:
        check_output(segments_path, resume=resume, overwrite=overwrite)
    model, device = prepare_model(model, device)
    names = reported_outputs(model)
    run = ScoreRun(str(output), shard=shard, scores={n: [] for n in names})
    paths = list(paths)
    if resume:  # one file, however it is spelled: relative or absolute, through a symlink or not
        done = {_same_file_key(p) for p in read_done_paths(output)}
        keep = [p for p in paths if _same_file_key(p) not in done]
        run.skipped = len(paths) - len(keep)
        paths = keep
    start = time.perf_counter()
    with (
        open_writer(output, columns_for(names), append=resume, stdout=stdout) as rows_out,
        (
            open_writer(segments_path, segment_columns_for(names), append=resume, stdout=stdout)
            if segments_path
            else _NullWriter()
        ) as seg_out,
        ScoreProgress(len(paths), enabled=progress) as bar,
    ):
        for r in iter_scores(
            paths,
            model,
            batch_size=batch_size,
            workers=workers,
            device=device,
            channel=channel,
            window_s=window_s,
            hop_s=hop_s,
            segments=bool(segments_path),
        ):
            for s in r.segments:  # segments first: a row in the output means its segments are complete
                seg_out.write(s)
            rows_out.write(r.row)
            run.scored += 1
            run.failed += bool(r.row["error"])
            if not r.row["error"]:
                for n in names:
                    run.scores[n].append(r.row[n])
            run.audio_s += r.audio_s
            bar.advance(r)
            if on_result is not None:
                on_result(r)
    run.wall_s = time.perf_counter() - start
    return run


def _same_file_key(path: str | os.PathLike) -> str:
    """What makes two spellings of a path one file for ``--resume``: the absolute path with symlinks resolved
    (relative paths are taken from the current folder). The output keeps the user's spelling."""
    return os.path.realpath(path)


class _NullWriter:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def write(self, row: dict) -> None:
        return None


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """A scores file written by ``jsqa score`` (CSV or JSONL) → DataFrame."""
    import pandas as pd

    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    return pd.read_csv(path, keep_default_na=True, dtype={"warnings": str, "error": str, "model": str})


def summarize(df: pd.DataFrame) -> dict:
    """Files, failed, mean/median MOS, mean SIG and BAK (``mean_sig``, ``mean_bak``: only when the table has those
    columns) and total audio hours of a scores table."""
    import pandas as pd

    err = df["error"].fillna("").astype(str).str.len() > 0 if "error" in df else pd.Series(False, index=df.index)
    mos = pd.to_numeric(df.get("mos", pd.Series(dtype=float)), errors="coerce")[~err]
    dur = pd.to_numeric(df.get("duration_s", pd.Series(dtype=float)), errors="coerce")[~err]
    out = {
        "files": int(len(df)),
        "failed": int(err.sum()),
        "mean_mos": float(mos.mean()) if len(mos) else math.nan,
        "median_mos": float(mos.median()) if len(mos) else math.nan,
    }
    for head in P835_HEADS:
        if head in df:
            values = pd.to_numeric(df[head], errors="coerce")[~err]
            out[f"mean_{head}"] = float(values.mean()) if len(values) else math.nan
    return {**out, "audio_h": float(dur.sum()) / 3600}
