"""Stage 2 of JSQA: fine-tune an encoder (pretrained, or the same network from scratch) plus a MOS head on labelled
speech, validate through the scoring path, keep the best model, stop early.

    NISQA corpus / labelled CSV ──► random crops (train) ─┐
                                                          ├─► encoder + MOS head ──► MSE / L1 ──► AdamW (2 LRs)
    validation files ──► scoring windows (score_waveforms) ┘      every eval: RMSE, MAE, PCC, SRCC → best? save

With ``--rank-weight``, grouped training files (versions of one recording) bring a partner crop, and the loss
also fits the score difference of each crop and its partner.

The output folder is a normal model folder (config.json + model.safetensors, the best validation step) that
``score``, ``evaluate`` and ``push`` take; next to it the run keeps ``checkpoint.pt`` (the latest state, for
``--resume``) and ``metrics.jsonl``. Provenance and validation metrics go into config.json's ``metadata``.
Runs on CPU, one GPU, or several with ``torchrun`` (DDP, bf16 autocast on CUDA), like ``pretrain``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from jsqa_cli.audio import HOP_S, SAMPLE_RATE, WINDOW_S, AudioError, load_audio, pad_batch
from jsqa_cli.evaluate import compute_metrics, condition_means
from jsqa_cli.model import (CONFIG_NAME, JSQA, WEIGHTS_NAME, config_from_preset, load_model, read_config,
                            resolve_model, save_model)
from jsqa_cli.pairs import PairSampler
from jsqa_cli.scoring import score_waveforms
from jsqa_cli.training_utils import (CHECKPOINT_NAME, MetricsLog, all_reduce_mean, autocast, distributed,
                                     load_checkpoint, save_checkpoint, seed_everything, set_rng_state,
                                     training_progress, unwrap, warmup_cosine)

NISQA_CORPUS_CSV = "NISQA_corpus_file.csv"
NISQA_TRAIN_DBS = ("NISQA_TRAIN_SIM", "NISQA_TRAIN_LIVE")
NISQA_VAL_DBS = ("NISQA_VAL_SIM", "NISQA_VAL_LIVE")
NISQA_TEST_DBS = ("NISQA_TEST_FOR", "NISQA_TEST_P501", "NISQA_TEST_LIVETALK")
PATH_COLUMNS = ("path", "file", "filepath_deg", "filepath")  # accepted names of the audio column in a CSV
CONDITION_COLUMNS = ("condition", "con")


# ---------------------------------------------------------------------------------------------------- data


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None


def _mos_column(df: pd.DataFrame, source: Path, column: str = "mos") -> pd.Series:
    mos = pd.to_numeric(df[column], errors="coerce")
    bad = mos.isna() | ~np.isfinite(mos)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{source}: row {i + 2}: {column} is not a number ({df[column].iloc[i]!r})")
    return mos.astype(float)


def _condition_label(v) -> object:
    # a column with gaps reads as float: condition 3 must stay "3", not "3.0", to match <DB>_con.csv
    if pd.isna(v):
        return pd.NA
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _conditions(df: pd.DataFrame, column: str | None) -> pd.Series:
    """Condition labels as strings (missing: NA), the same whichever file they were read from."""
    if column is None:
        return pd.Series(pd.NA, index=df.index, dtype="object")
    return df[column].map(_condition_label).astype("object")


def read_nisqa(root: str | os.PathLike, dbs: Sequence[str]) -> pd.DataFrame:
    """Files of the NISQA corpus databases ``dbs`` → DataFrame (path, mos, condition, db), in corpus order.

    Reads ``NISQA_corpus_file.csv`` at ``root`` (or, where it is missing, each ``<DB>/<DB>_file.csv``); paths
    come from ``filepath_deg`` relative to ``root``, conditions from ``con``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such NISQA corpus folder")
    dbs = list(dict.fromkeys(dbs))
    if not dbs:
        raise ValueError("choose at least one NISQA database (db)")
    corpus = root / NISQA_CORPUS_CSV
    if corpus.is_file():
        df, source = _read_csv(corpus), corpus
    else:
        per_db = [root / db / f"{db}_file.csv" for db in dbs]
        if not all(p.is_file() for p in per_db):
            missing = next(p for p in per_db if not p.is_file())
            raise FileNotFoundError(f"{root}: not a NISQA corpus (no {NISQA_CORPUS_CSV}, no {missing.relative_to(root)})")
        df, source = pd.concat([_read_csv(p).assign(db=p.parent.name) if "db" not in _read_csv(p).columns
                                else _read_csv(p) for p in per_db], ignore_index=True), per_db[0]
    missing_cols = [c for c in ("db", "filepath_deg", "mos") if c not in df.columns]
    if missing_cols:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing_cols)} (has {', '.join(map(str, df.columns))})")
    known = list(dict.fromkeys(df["db"].astype(str)))
    unknown = [db for db in dbs if db not in known]
    if unknown:
        raise ValueError(f"{source}: no database {unknown[0]} (has {', '.join(known)})")
    df = df[df["db"].astype(str).isin(dbs)].reset_index(drop=True)
    return pd.DataFrame({"path": [str(root / p) for p in df["filepath_deg"].astype(str)],
                         "mos": _mos_column(df, source),
                         "condition": _conditions(df, "con" if "con" in df.columns else None),
                         "db": df["db"].astype(str)})


def read_nisqa_conditions(root: str | os.PathLike, dbs: Sequence[str]) -> pd.DataFrame | None:
    """Per-condition MOS from the test sets' ``<DB>/<DB>_con.csv`` (columns con, mos) → (db, condition, mos), or
    None when no chosen database has one (then per-condition MOS is the mean of the files' MOS)."""
    frames = []
    for db in dbs:
        path = Path(root).expanduser() / db / f"{db}_con.csv"
        if not path.is_file():
            continue
        df = _read_csv(path)
        if not {"con", "mos"} <= set(df.columns):
            raise ValueError(f"{path}: expected columns con and mos (has {', '.join(map(str, df.columns))})")
        frames.append(pd.DataFrame({"db": db, "condition": _conditions(df, "con"), "mos": _mos_column(df, path)}))
    return pd.concat(frames, ignore_index=True) if frames else None


def csv_list(csv: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list:
    """One labelled CSV or several (``--train``, ``--val``, ``evaluate --csv``) as a list."""
    return [] if csv is None else [csv] if isinstance(csv, (str, os.PathLike)) else list(csv)


def csv_names(csvs: Sequence[str | os.PathLike]) -> list[str]:
    """A short name for each CSV: its stem, or ``<folder>/<stem>`` where two CSVs share a stem."""
    stems = [Path(c).stem for c in csvs]
    return [Path(c).stem if stems.count(Path(c).stem) == 1 else f"{Path(c).parent.name}/{Path(c).stem}"
            for c in csvs]


def read_labelled_csv(csv: str | os.PathLike) -> pd.DataFrame:
    """A labelled CSV (columns path or file, mos, optional condition or con, optional group) → DataFrame (path,
    mos, condition[, group]).

    Relative paths are resolved against the CSV's folder. ``group`` names versions of one clean reference (as
    ``training/simulate_mos.py --versions`` writes them), which ``finetune --rank-weight`` compares.
    """
    csv = Path(csv).expanduser()
    df = _read_csv(csv)
    path_col = next((c for c in PATH_COLUMNS if c in df.columns), None)
    mos_col = next((c for c in ("mos", "MOS") if c in df.columns), None)
    if path_col is None or mos_col is None:
        need = " and ".join(n for n, c in (("a path (or file) column", path_col), ("a mos column", mos_col)) if c is None)
        raise ValueError(f"{csv}: needs {need} (has {', '.join(map(str, df.columns)) or 'no columns'})")
    if df[path_col].isna().any():
        i = int(np.flatnonzero(df[path_col].isna().to_numpy())[0])
        raise ValueError(f"{csv}: row {i + 2}: empty {path_col}")
    paths = [p if p.is_absolute() else csv.parent / p for p in map(Path, df[path_col].astype(str))]
    out = pd.DataFrame({"path": [str(p) for p in paths], "mos": _mos_column(df, csv, mos_col),
                        "condition": _conditions(df, next((c for c in CONDITION_COLUMNS if c in df.columns), None))})
    if "db" in df.columns:
        out["db"] = df["db"].astype(str)
    if "group" in df.columns:  # qualified by the CSV, so that groups of two corpora never merge
        out["group"] = [pd.NA if pd.isna(g) else f"{csv}:{g}" for g in df["group"]]
    return out


def check_files(df: pd.DataFrame, what: str) -> float:
    """Refuse to start training on files that are missing or unreadable: one line naming the first bad file.
    Returns the files' total duration in seconds."""
    seconds = 0.0
    for path in df["path"]:
        try:
            seconds += sf.info(path).duration
        except Exception as e:  # noqa: BLE001 - soundfile raises several types for bad files
            problem = "no such file" if not os.path.exists(path) else \
                f"not a readable audio file ({str(e).split(':')[-1].strip() or type(e).__name__})"
            raise AudioError(path, f"{problem} ({what} set, {len(df)} files; fix or remove it)") from None
    return seconds


def available_memory() -> int | None:
    """Bytes of RAM the kernel can still give out (Linux ``MemAvailable``); None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def cache_memory_warning(seconds: float, files: int, processes: int = 1) -> str | None:
    """A one-line warning when ``--cache-audio`` (16-bit samples at 16 kHz, one cache per process on this
    machine) would take more than 80 % of the available RAM: the run would swap or stall instead of failing."""
    need, free = seconds * SAMPLE_RATE * 2 * processes, available_memory()
    if free is None or need <= 0.8 * free:
        return None
    who = f" ({processes} processes)" if processes > 1 else ""
    return (f"--cache-audio: the {files} training files need about {need / 2**30:.1f} GiB of RAM{who}, and "
            f"{free / 2**30:.1f} GiB is available; the run may swap or stall (leave out --cache-audio to decode "
            "on the fly)")


class DecodedAudio:
    """Many decoded 16 kHz waves packed into a few large blocks (+ where each wave lies), so DataLoader workers
    share them unchanged. Filled while the waves arrive: the peak memory is the cache plus one wave, not twice
    the cache (as collecting the waves and then concatenating them would be).

    ``dtype`` int16 keeps the samples as 16-bit PCM (half the memory of float32; exact for 16-bit files at
    16 kHz, otherwise rounded to the 16-bit grid, 1/65536 of full scale); items come back as float32 either way."""

    BLOCK = 2**26  # samples per block (256 MiB as float32, 128 MiB as int16); a longer wave gets its own

    def __init__(self, waves: Iterable[np.ndarray], block: int = BLOCK, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.int16):
            raise ValueError(f"DecodedAudio stores float32 or int16, not {self.dtype}")
        self.blocks: list[np.ndarray] = []
        where, buf, fill = [], np.zeros(0, self.dtype), 0
        for w in waves:
            if fill + len(w) > len(buf):
                if fill:
                    self.blocks.append(buf[:fill])
                buf, fill = np.empty(max(block, len(w)), self.dtype), 0  # pages are committed as they are filled
            buf[fill:fill + len(w)] = w if self.dtype == np.float32 else np.clip(np.rint(w * 32768.0), -32768, 32767)
            where.append((len(self.blocks), fill, fill + len(w)))
            fill += len(w)
        if fill:
            self.blocks.append(buf[:fill])
        self.where = np.array(where, dtype=np.int64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.where)

    def __getitem__(self, i: int) -> np.ndarray:
        b, start, end = self.where[i]
        wave = self.blocks[b][start:end]
        return wave if self.dtype == np.float32 else wave.astype(np.float32) / np.float32(32768.0)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.blocks)


class _Decode(Dataset):
    def __init__(self, paths):
        self.paths = list(paths)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return load_audio(self.paths[i], SAMPLE_RATE)[0]


def _as_is(item):
    return item


def decode_all(paths: Sequence[str], workers: int = 0, dtype=np.float32) -> DecodedAudio:
    """Decode (and resample) every file once, in ``workers`` DataLoader processes (``dtype``: see DecodedAudio)."""
    loader = DataLoader(_Decode(paths), batch_size=None, num_workers=workers, collate_fn=_as_is)
    return DecodedAudio(iter(loader), dtype=dtype)


class MOSCrops(Dataset):
    """Training examples, indexed by ``(epoch, index)`` (see :class:`jsqa_cli.pairs.PairSampler`): a random crop of
    the file (length uniform in ``crop_s``; the whole file when shorter), its MOS, and a partner or None.

    With ``groups`` (one label per file, NA for none), a file that shares its group with others comes with a
    partner: another version of the same clean reference, drawn at random, cropped at the same place, with its
    MOS (for the ranking loss of ``--rank-weight``). Crops and partners are drawn from (seed, epoch, index), never
    from worker RNG state, so the data is the same for any number of workers and a resumed run sees exactly what
    an uninterrupted one would. Files are decoded on the fly, or cut from ``cache`` (:class:`DecodedAudio`)."""

    def __init__(self, paths: Sequence[str], mos: Sequence[float], crop_s: tuple[float, float] = (4.0, 6.0),
                 cache: DecodedAudio | None = None, seed: int = 0, groups: Sequence | None = None):
        self.paths, self.mos, self.crop_s = list(paths), [float(m) for m in mos], tuple(crop_s)
        self.cache, self.seed = cache, seed
        self.others: list[list[int]] = [[] for _ in self.paths]  # the other members of each file's group
        if groups is not None:
            members = pd.Series(range(len(self.paths))).groupby(pd.Series(list(groups), dtype="object")).agg(list)
            for idx in members:
                for i in idx:
                    self.others[i] = [j for j in idx if j != i]

    def __len__(self) -> int:
        return len(self.paths)

    def _wave(self, i: int) -> np.ndarray:
        return self.cache[i] if self.cache is not None else load_audio(self.paths[i], SAMPLE_RATE)[0]

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, float, tuple[torch.Tensor, float] | None]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        wav = self._wave(i)
        rng = np.random.default_rng([self.seed, epoch, i])
        n = int(round(rng.uniform(*self.crop_s) * SAMPLE_RATE))
        start = int(rng.integers(0, len(wav) - n + 1)) if len(wav) > n else 0
        partner = None
        if self.others[i]:
            j = self.others[i][int(rng.integers(len(self.others[i])))]
            other = self._wave(j)
            s = min(start, max(len(other) - n, 0))  # versions are as long as their reference, unless audio was removed
            partner = torch.from_numpy(np.array(other[s:s + n], dtype=np.float32)), self.mos[j]
        return torch.from_numpy(np.array(wav[start:start + n], dtype=np.float32)), self.mos[i], partner


def collate_crops(items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(waves, lengths, mos, pairs): the batch's crops, then their partners; ``pairs`` (P, 2) indexes a crop and
    its partner in that order."""
    partners = [(k, p) for k, (_, _, p) in enumerate(items) if p is not None]
    crops = [(w, m) for w, m, _ in items] + [p for _, p in partners]
    wav, lengths = pad_batch([w for w, _ in crops])
    pairs = torch.tensor([[k, len(items) + q] for q, (k, _) in enumerate(partners)], dtype=torch.long).reshape(-1, 2)
    return wav, lengths, torch.tensor([m for _, m in crops], dtype=torch.float32), pairs


# ---------------------------------------------------------------------------------------------- the model


def build_finetune_model(init: str | None, from_scratch: bool, preset: str = "small",
                         projection_head: str = "drop", seed: int = 0):
    """The network to fine-tune and a description of where it came from.

    ``init`` (a model name/folder/Hub id, normally a pretrained encoder) gives encoder weights; with
    ``from_scratch`` only its architecture is used (the paper's baseline: the same network, random weights),
    and without ``init`` the architecture is ``preset``. ``projection_head``: ``drop`` puts the MOS head on the
    encoder embedding (and removes the projection head), ``keep`` puts it on the projection head's output.
    """
    if projection_head not in ("drop", "keep"):
        raise ValueError(f"--projection-head must be drop or keep, not {projection_head!r}")
    if init is None and not from_scratch:
        raise ValueError("choose where to start: --init PRETRAINED (a pretrained encoder) or --from-scratch")
    source = None
    if init is not None:
        folder = resolve_model(init)
        cfg, meta = read_config(folder)
        source = load_model(folder) if not from_scratch else None
    else:
        cfg, meta = config_from_preset(preset), {}
    keep = projection_head == "keep"
    if keep and not cfg.projection_head:
        raise ValueError(f"{init}: --projection-head keep needs a projection head, and this encoder has none "
                         "(pretrained with --no-projection-head); use --projection-head drop")
    cfg = dataclasses.replace(cfg, projection_head=keep, mos_input="projection" if keep else "embedding")
    torch.manual_seed(seed)
    model = JSQA(cfg)
    if source is not None:
        target = model.state_dict()  # every tensor whose name and shape fit (a kept head's MOS head does not)
        state = {k: v for k, v in source.state_dict().items() if k in target and v.shape == target[k].shape}
        missing = [k for k in target if k not in state and k.startswith("encoder.")
                   and not k.startswith("encoder.frontend.")]
        if missing:
            raise ValueError(f"{init}: encoder weights do not fit the network (missing {missing[:3]})")
        model.load_state_dict(state, strict=False)
    provenance = {"kind": "scratch" if source is None else "pretrained", "model": None if init is None else str(init),
                  "model_stage": meta.get("stage"), "preset": cfg.preset, "projection_head": projection_head}
    return model, provenance


# ---------------------------------------------------------------------------------------------- training

# Parameters that train at --lr-head: the MOS head, and the flatness input (model.add_flatness_bands), which
# starts from zero in a trained network and learns little at the encoder's rate; --lr-flatness gives that input a
# rate of its own.
FLATNESS_INPUT = "encoder.stem.conv1_flatness."
HEAD_RATE = ("mos_head.", FLATNESS_INPUT)
TRAINING_DIR = "training"  # inside the model folder: checkpoint.pt, metrics.jsonl, options.json


@dataclass
class FinetuneOptions:
    """Everything ``jsqa finetune`` takes; defaults follow docs/finetuning.md (method.md where it is silent)."""

    output: str = ""  # the model folder; the run's state goes to OUTPUT/training/
    # data: a NISQA corpus, or labelled CSVs
    nisqa_root: str | None = None
    train_db: tuple[str, ...] = NISQA_TRAIN_DBS
    val_db: tuple[str, ...] = NISQA_VAL_DBS
    train_csv: str | tuple[str, ...] | None = None  # one labelled CSV, or several read as one training set
    val_csv: str | tuple[str, ...] | None = None  # one labelled CSV, or several validated as one set
    # where to start
    init: str | None = None  # a pretrained encoder (model name, folder or Hub id)
    from_scratch: bool = False  # random weights: init's architecture, or preset's
    preset: str = "small"
    projection_head: str = "drop"  # drop: MOS head on the encoder embedding; keep: on the projection output
    # optimisation
    steps: int = 3000
    batch_size: int = 32  # per process
    lr_encoder: float = 1e-4
    lr_head: float = 1e-3
    lr_flatness: float | None = None  # the flatness input's rate (JSQAConfig.flatness_bands); None: lr_head
    weight_decay: float = 0.01
    warmup_steps: int = 100
    freeze_encoder_steps: int = 0  # train only the MOS head for this many steps first
    loss: str = "mse"  # mse or l1
    rank_weight: float = 0.0  # weight of the loss on score differences between versions of one reference (group)
    grad_clip: float = 1.0
    crop_s: tuple[float, float] = (4.0, 6.0)  # random training crop length range, seconds
    # validation (the scoring path: windows, file = mean of windows) and early stopping
    eval_every: int = 200
    early_stop: str = "pcc"  # pcc (higher is better) or rmse (lower is better)
    patience: int = 5  # evaluations without improvement before stopping; 0: never stop early
    val_batch_size: int = 32
    window_s: float = WINDOW_S
    hop_s: float = HOP_S
    # machinery
    seed: int = 0
    device: str = "auto"
    workers: int = -1  # DataLoader workers per process; -1: min(8, cores)
    cache_audio: bool = False  # decode the training files once and keep them in RAM
    bf16: bool = True
    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = None  # stop (checkpointed) after this many steps of this invocation; then --resume
    log_every: int = 20
    quiet: bool = False


def _options(options: FinetuneOptions | None, overrides: dict) -> FinetuneOptions:
    known = {f.name for f in dataclasses.fields(FinetuneOptions)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown finetune option(s): {', '.join(sorted(unknown))}")
    o = dataclasses.replace(options or FinetuneOptions(), **overrides)
    o.train_db, o.val_db, o.crop_s = tuple(o.train_db), tuple(o.val_db), tuple(float(c) for c in o.crop_s)
    if not o.output:
        raise ValueError("finetune needs an output model folder (-o)")
    for name in ("train_csv", "val_csv"):
        value = getattr(o, name)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            setattr(o, name, tuple(str(c) for c in value) or None)
    if (o.nisqa_root is None) == (o.train_csv is None):
        raise ValueError("give either --nisqa-root or --train/--val CSVs, not both or neither")
    if o.train_csv is not None and o.val_csv is None:
        raise ValueError("--train needs --val (a labelled CSV for validation and early stopping)")
    if o.loss not in ("mse", "l1"):
        raise ValueError(f"--loss must be mse or l1, not {o.loss!r}")
    if o.early_stop not in ("pcc", "rmse"):
        raise ValueError(f"--early-stop must be pcc or rmse, not {o.early_stop!r}")
    if len(o.crop_s) != 2 or not 0 < o.crop_s[0] <= o.crop_s[1]:
        raise ValueError(f"crop lengths must be MIN MAX with 0 < MIN <= MAX (got {o.crop_s})")
    for name in ("steps", "batch_size", "eval_every", "val_batch_size", "log_every"):
        if getattr(o, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if o.patience < 0 or o.freeze_encoder_steps < 0 or o.warmup_steps < 0 or o.rank_weight < 0:
        raise ValueError("--patience, --freeze-encoder-steps, --warmup-steps and --rank-weight must not be negative")
    if o.lr_flatness is not None and o.lr_flatness < 0:
        raise ValueError("--lr-flatness must not be negative")
    return o


def load_finetune_data(opts: FinetuneOptions) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(train, val, a description for the model's metadata) from a NISQA corpus or labelled CSVs."""
    if opts.nisqa_root is not None:
        train, val = read_nisqa(opts.nisqa_root, opts.train_db), read_nisqa(opts.nisqa_root, opts.val_db)
        info = {"source": "nisqa", "nisqa_root": str(opts.nisqa_root), "train_db": list(opts.train_db),
                "val_db": list(opts.val_db)}
    else:
        csvs, vcsvs = csv_list(opts.train_csv), csv_list(opts.val_csv)
        train = pd.concat([read_labelled_csv(c) for c in csvs], ignore_index=True)
        vals = [read_labelled_csv(c) for c in vcsvs]
        if len(vals) > 1:  # conditions are named per corpus: qualify them so that two CSVs' conditions never merge
            vals = [v.assign(condition=[pd.NA if pd.isna(c) else f"{name}:{c}" for c in v["condition"]])
                    for v, name in zip(vals, csv_names(vcsvs))]
        val = pd.concat(vals, ignore_index=True)
        info = {"source": "csv", "train_csv": str(csvs[0]) if len(csvs) == 1 else [str(c) for c in csvs],
                "val_csv": str(vcsvs[0]) if len(vcsvs) == 1 else [str(c) for c in vcsvs]}
    for name, df in (("train", train), ("val", val)):
        if not len(df):
            raise ValueError(f"the {name} set is empty")
    info.update(train_files=len(train), val_files=len(val), train_mos_mean=round(float(train["mos"].mean()), 4))
    return train, val, info


def _improved(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True  # the first evaluation is always kept, so that a model folder exists
    if not math.isfinite(value):
        return False
    return value > best if metric == "pcc" else value < best


def validate(model, waves: Sequence[np.ndarray], mos: np.ndarray, conditions: pd.Series | None, d=None, *,
             batch_size: int = 32, window_s: float = WINDOW_S, hop_s: float = HOP_S) -> tuple[dict, np.ndarray]:
    """Score this rank's share of the validation files (``waves`` = files rank::world) through the scoring path
    (:func:`jsqa_cli.scoring.score_waveforms`), gather the shares, and measure them against ``mos``.

    Returns (metrics: n, rmse, mae, pcc, srcc, and ``condition`` with the same per condition when ``conditions``
    has values; the predictions). Every rank returns the same."""
    model = unwrap(model)
    device = d.device if d is not None else next(model.parameters()).device
    pred = score_waveforms(model, waves, batch_size=batch_size, device=device, window_s=window_s, hop_s=hop_s)
    if d is not None and d.enabled:
        shares = [None] * d.world_size
        dist.all_gather_object(shares, pred)
        pred = np.full(len(mos), np.nan)
        for r, share in enumerate(shares):
            pred[r::d.world_size] = share
    metrics = compute_metrics(pred, mos)
    if conditions is not None and conditions.notna().any():
        cm = condition_means(pd.DataFrame({"condition": np.asarray(conditions, dtype=object), "mos": mos,
                                           "mos_pred": pred}))
        metrics["condition"] = compute_metrics(cm["mos_pred"], cm["mos"])
    return metrics, pred


def finetune(options: FinetuneOptions | None = None, **overrides) -> Path:
    """Fine-tune for MOS; returns the model folder (``options.output``) holding the best validation step."""
    opts = _options(options, overrides)
    with distributed(opts.device) as d:
        return _finetune(opts, d)


def _finetune(opts: FinetuneOptions, d) -> Path:
    out = Path(opts.output).expanduser()
    run_dir = out / TRAINING_DIR
    say = (lambda *a: None) if (opts.quiet or not d.is_main) else print
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder")
    if opts.resume and not (run_dir / CHECKPOINT_NAME).is_file():
        raise FileNotFoundError(f"{run_dir / CHECKPOINT_NAME}: no checkpoint to resume from")
    if not (opts.resume or opts.overwrite) and ((out / CONFIG_NAME).exists() or run_dir.exists()):
        raise ValueError(f"{out}: already holds a model or a fine-tuning run; --resume continues it, "
                              "--overwrite starts again")
    if d.enabled:  # every rank has checked the folder before rank 0 writes to it
        dist.barrier()
    workers = min(8, os.cpu_count() or 1) if opts.workers < 0 else opts.workers
    # before minutes of checking and decoding: the network to start from exists and has what the options train
    start = read_config(resolve_model(opts.init))[0] if opts.init is not None else config_from_preset(opts.preset)
    if opts.lr_flatness is not None and not start.flatness_bands:
        raise ValueError(f"--lr-flatness: {opts.init or '--preset ' + opts.preset} has no flatness input "
                         "(flatness_bands is 0; see docs/finetuning.md)")

    # ---- data: every file checked up front, validation audio decoded once (this rank's share)
    train_df, val_df, data_info = load_finetune_data(opts)
    if len(train_df) < d.world_size:
        raise ValueError(f"{len(train_df)} training files for {d.world_size} ranks")
    train_seconds = check_files(train_df, "train")
    check_files(val_df, "val")
    val_waves = list(decode_all(list(val_df["path"].iloc[d.rank::d.world_size]), workers))
    cache = None
    if opts.cache_audio:
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if d.enabled else 1
        if d.is_main and (msg := cache_memory_warning(train_seconds, len(train_df), local_ranks)):
            warnings.warn(msg, stacklevel=2)
        cache = decode_all(list(train_df["path"]), workers, dtype=np.int16)  # 16-bit: half the RAM
        say(f"Cached {len(cache)} training files in RAM ({cache.nbytes / 2**30:.2f} GiB).")

    # ---- model and optimiser: the encoder (and a kept projection head) at one rate, HEAD_RATE's at another
    seed_everything(opts.seed)
    model, init_info = build_finetune_model(opts.init, opts.from_scratch, opts.preset, opts.projection_head,
                                            opts.seed)
    model.to(d.device)

    def group(name: str) -> str:
        if not name.startswith(HEAD_RATE):
            return "encoder"
        return "flatness" if opts.lr_flatness is not None and name.startswith(FLATNESS_INPUT) else "head"

    rates, params = {"encoder": opts.lr_encoder, "head": opts.lr_head, "flatness": opts.lr_flatness}, {}
    for name, p in model.named_parameters():
        params.setdefault(group(name), []).append(p)
    optimizer = torch.optim.AdamW([{"params": ps, "lr": rates[g], "name": g} for g, ps in params.items()],
                                  weight_decay=opts.weight_decay)
    scheduler = warmup_cosine(optimizer, min(opts.warmup_steps, opts.steps - 1), opts.steps)
    step, state, ckpt = 0, {"best": None, "best_step": None, "bad_evals": 0, "stopped": False,
                            "best_metrics": {}}, None
    if opts.resume:
        ckpt = load_checkpoint(run_dir, model, optimizer, scheduler, restore_rng=False)
        step = int(ckpt["step"])
        state.update(ckpt["extra"].get("state", {}))
        say(f"Resumed {out} at step {step}.")
    else:
        seed_everything(opts.seed + d.rank)  # dropout differs between ranks
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not opts.resume:  # --overwrite: nothing of an old run may survive into this one
            for old in (out / CONFIG_NAME, out / WEIGHTS_NAME, run_dir / CHECKPOINT_NAME):
                old.unlink(missing_ok=True)
        (run_dir / "options.json").write_text(json.dumps({**asdict(opts), "world_size": d.world_size,
                                                          "workers": workers}, indent=2) + "\n")
    log = MetricsLog(run_dir, enabled=d.is_main, resume=opts.resume)

    groups = train_df["group"] if opts.rank_weight > 0 and "group" in train_df.columns else None
    dataset = MOSCrops(train_df["path"], train_df["mos"], opts.crop_s, cache, opts.seed, groups)
    if opts.rank_weight > 0 and not any(dataset.others):
        raise ValueError("--rank-weight needs training files that share a `group` (versions of one clean reference, "
                         "as training/simulate_mos.py --versions writes them); no two training rows do")
    sampler = PairSampler(len(dataset), opts.seed, d.rank, d.world_size, start=step * opts.batch_size)
    loader = DataLoader(dataset, batch_size=opts.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_crops, pin_memory=d.device.type == "cuda",
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    batches = iter(loader)
    if ckpt is not None:
        set_rng_state(ckpt["rng"])  # after the loader drew its worker seeds: dropout continues exactly

    def wrap(frozen: bool):
        """The module the steps run: the encoder's parameters frozen or not (DDP is rebuilt when that changes)."""
        for p in params["encoder"]:
            p.requires_grad_(not frozen)
        if not d.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)

    frozen = step < opts.freeze_encoder_steps
    net = wrap(frozen)
    loss_fn = F.mse_loss if opts.loss == "mse" else F.l1_loss
    provenance = {"stage": "finetuned", "task": "mos", "init": init_info, "data": data_info,
                  "training": {"preset": model.config.preset, "parameters": model.num_parameters,
                               "world_size": d.world_size, "global_batch_size": opts.batch_size * d.world_size,
                               **{k: getattr(opts, k) for k in (
                                   "steps", "lr_encoder", "lr_head", "lr_flatness", "weight_decay", "warmup_steps",
                                   "freeze_encoder_steps", "loss", "rank_weight", "grad_clip", "crop_s", "eval_every",
                                   "early_stop", "patience", "seed") if getattr(opts, k) is not None}},
                  "scoring": {"window_s": opts.window_s, "hop_s": opts.hop_s}}
    stop_at = min(opts.steps, step + opts.stop_after) if opts.stop_after else opts.steps
    say(f"Fine-tuning {model.config.preset} ({model.num_parameters / 1e6:.2f} M parameters, {init_info['kind']}"
        f"{' from ' + str(opts.init) if init_info['kind'] == 'pretrained' else ''}) on {len(train_df)} files, "
        f"validating on {len(val_df)}; batch {opts.batch_size}×{d.world_size}, {opts.steps} steps, "
        f"device {d.device}, {workers} loader workers.")

    # ---- steps
    model.train()
    t_log, seen, run_loss, run_n = time.time(), 0, 0.0, 0
    with training_progress(enabled=d.is_main, quiet=opts.quiet) as progress:
        task = progress.add_task("finetune", total=opts.steps, completed=step, status="")
        while step < stop_at and not state["stopped"]:
            if frozen and step >= opts.freeze_encoder_steps:
                frozen, net = False, wrap(False)
            wav, lengths, mos, pairs = (t.to(d.device, non_blocking=True) for t in next(batches))
            with autocast(d.device, opts.bf16):
                pred = net(wav, lengths).float()
            loss = loss_fn(pred, mos)
            if len(pairs):  # versions of one reference: their score difference should be their label difference
                a, b = pairs[:, 0], pairs[:, 1]
                loss = loss + opts.rank_weight * loss_fn(pred[a] - pred[b], mos[a] - mos[b])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opts.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], opts.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            seen += len(mos) * d.world_size
            run_loss, run_n = run_loss + float(loss.detach()), run_n + 1

            if step % opts.log_every == 0 or step == stop_at:
                mean_loss = all_reduce_mean(run_loss / run_n, d)
                now = time.time()
                log.log(step=step, loss=mean_loss, epoch=step * opts.batch_size // sampler.per_rank,
                        frozen_encoder=frozen, files_per_s=round(seen / max(now - t_log, 1e-9), 2),
                        **{f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups})
                t_log, seen, run_loss, run_n = now, 0, 0.0, 0
                progress.update(task, status=f"loss {mean_loss:.4f}")

            if step % opts.eval_every == 0 or step == opts.steps:
                metrics, _ = validate(model, val_waves, val_df["mos"].to_numpy(float), val_df["condition"], d,
                                      batch_size=opts.val_batch_size, window_s=opts.window_s, hop_s=opts.hop_s)
                value = metrics[opts.early_stop]
                if _improved(value, state["best"], opts.early_stop):
                    state.update(best=value, best_step=step, bad_evals=0, best_metrics=metrics)
                    if d.is_main:
                        save_model(model, out, {**provenance, "best_step": step, "validation": metrics})
                else:
                    state["bad_evals"] += 1
                    state["stopped"] = 0 < opts.patience <= state["bad_evals"]
                log.log(step=step, **{f"val_{k}": v for k, v in metrics.items() if k != "condition"},
                        **{f"val_condition_{k}": v for k, v in metrics.get("condition", {}).items()},
                        best_step=state["best_step"], bad_evals=state["bad_evals"], early_stopped=state["stopped"])
                progress.update(task, status=f"val {opts.early_stop} {value:.3f} (best {state['best']:.3f} "
                                             f"@ {state['best_step']})")
            if d.is_main and (step % opts.eval_every == 0 or step == stop_at or state["stopped"]):
                save_checkpoint(run_dir, model, optimizer, scheduler, step, extra={"state": state})
            progress.update(task, completed=step)

    finished = step >= opts.steps or state["stopped"]
    if d.is_main and finished:  # final provenance: how far the run went and why it ended
        config = json.loads((out / CONFIG_NAME).read_text())
        config["metadata"].update(provenance, best_step=state["best_step"], validation=state["best_metrics"],
                                  steps_run=step, early_stopped=state["stopped"])
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str) + "\n")
        m = state["best_metrics"]
        say(f"Model saved to {out}: best step {state['best_step']} of {step}"
            f"{' (stopped early)' if state['stopped'] else ''}, validation PCC {m.get('pcc', math.nan):.3f}, "
            f"RMSE {m.get('rmse', math.nan):.3f}.")
    elif d.is_main:
        say(f"Stopped at step {step} of {opts.steps}; continue with --resume.")
    if d.enabled:
        dist.barrier()
    return out

