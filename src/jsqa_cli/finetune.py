"""Stage 2 of JSQA: fine-tune an encoder (pretrained, or the same network from scratch) plus a MOS head on labelled
speech, validate through the scoring path, keep the best model, stop early.

    NISQA corpus / labelled CSV ──► random crops (train) ─┐
                                                          ├─► encoder + MOS head ──► MSE / L1 ──► AdamW (2 LRs)
    validation files ──► scoring windows (score_waveforms) ┘      every eval: RMSE, MAE, PCC, SRCC → best? save

With ``--rank-weight``, grouped training files (versions of one recording) bring a partner crop, and the loss
also fits the score difference of each crop and its partner.
With ``--heads``, extra 1..5 heads (P.835 ``sig``/``bak``, teachers' scores) learn from label columns of their
names beside MOS (rows without a label give no loss); with ``--distill``, a linear map of the embedding is pulled
towards a teacher's embedding of each file (a training aid, never saved with the model).

The output folder is a normal model folder (config.json + model.safetensors, the best validation step) that
``score``, ``evaluate`` and ``push`` take; next to it the run keeps ``checkpoint.pt`` (the latest state, for
``--resume``) and ``metrics.jsonl``. Provenance and validation metrics go into config.json's ``metadata``.
Runs on CPU, one GPU, or several with ``torchrun`` (DDP, bf16 autocast on CUDA), like ``pretrain``: this module
is the method (data, heads, targets, validation); the loop is :func:`jsqa_cli.train.train`, shared with pretraining.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import soundfile as sf
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from jsqa_cli.audio import HOP_S, SAMPLE_RATE, WINDOW_S, AudioError, load_audio, pad_batch
from jsqa_cli.distributed import all_reduce_mean, default_workers, distributed, unwrap
from jsqa_cli.evaluate import compute_metrics, condition_means
from jsqa_cli.labels import (
    NISQA_TRAIN_DBS,
    NISQA_VAL_DBS,
    csv_list,
    csv_names,
    load_teacher_embeddings,
    match_paths,
    read_labelled_csv,
    read_nisqa,
)
from jsqa_cli.model import (
    CONFIG_NAME,
    JSQA,
    SIDE_INPUTS,
    WEIGHTS_NAME,
    add_heads,
    config_from_preset,
    drop_heads,
    load_model,
    read_config,
    resolve_model,
    save_model,
)
from jsqa_cli.pairs import PairSampler
from jsqa_cli.scoring import score_waveforms
from jsqa_cli.train import (
    CHECKPOINT_NAME,
    Task,
    check_options,
    param_groups,
    prepare_run_folder,
    seed_everything,
    train,
    write_options,
)

# ---------------------------------------------------------------------------------------------------- data


def check_files(df: pd.DataFrame, what: str) -> float:
    """Refuse to start training on files that are missing or unreadable: one line naming the first bad file.
    Returns the files' total duration in seconds."""
    seconds = 0.0
    for path in df["path"]:
        try:
            seconds += sf.info(path).duration
        except Exception as e:  # noqa: BLE001 - soundfile raises several types for bad files
            problem = (
                "no such file"
                if not os.path.exists(path)
                else f"not a readable audio file ({str(e).split(':')[-1].strip() or type(e).__name__})"
            )
            raise AudioError(path, f"{problem} ({what} set, {len(df)} files; fix or remove it)") from None
    return seconds


def available_memory() -> int | None:
    """Bytes of RAM the system can still give out (psutil); None where it cannot say."""
    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError, AttributeError):
        return None


def cache_memory_warning(seconds: float, files: int, processes: int = 1) -> str | None:
    """A one-line warning when ``--cache-audio`` (16-bit samples at 16 kHz, one cache per process on this
    machine) would take more than 80 % of the available RAM: the run would swap or stall instead of failing."""
    need, free = seconds * SAMPLE_RATE * 2 * processes, available_memory()
    if free is None or need <= 0.8 * free:
        return None
    who = f" ({processes} processes)" if processes > 1 else ""
    return (
        f"--cache-audio: the {files} training files need about {need / 2**30:.1f} GiB of RAM{who}, and "
        f"{free / 2**30:.1f} GiB is available; the run may swap or stall (leave out --cache-audio to decode "
        "on the fly)"
    )


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
            buf[fill : fill + len(w)] = w if self.dtype == np.float32 else np.clip(np.rint(w * 32768.0), -32768, 32767)
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
    the file (length uniform in ``crop_s``; the whole file when shorter), its targets, its index, and a partner or
    None.

    ``targets``: each file's MOS, or a row per file of MOS then the extra heads' labels (``--heads``; NaN where a
    file has none); an item's target is that row, float32. With ``groups`` (one label per file, NA for none), a file
    that shares its group with others comes with a partner ``(wave, target, index)``: another version of the same
    clean reference, drawn at random, cropped at the same place (for the ranking loss of ``--rank-weight``). Crops
    and partners are drawn from (seed, epoch, index), never from worker RNG state, so the data is the same for any
    number of workers and a resumed run sees exactly what an uninterrupted one would. Files are decoded on the fly,
    or cut from ``cache`` (:class:`DecodedAudio`)."""

    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[float] | np.ndarray,
        crop_s: tuple[float, float] = (4.0, 6.0),
        cache: DecodedAudio | None = None,
        seed: int = 0,
        groups: Sequence | None = None,
    ):
        self.paths, self.crop_s, self.cache, self.seed = list(paths), tuple(crop_s), cache, seed
        self.targets = np.asarray(targets, dtype=np.float32).reshape(len(self.paths), -1)  # (files, 1 + heads)
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

    def _target(self, i: int) -> np.ndarray:
        return self.targets[i].copy()  # (1 + heads,); numpy: a tensor per item costs more than the rest of it

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, np.ndarray, int, tuple | None]:
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
            partner = torch.from_numpy(np.array(other[s : s + n], dtype=np.float32)), self._target(j), j
        return torch.from_numpy(np.array(wav[start : start + n], dtype=np.float32)), self._target(i), i, partner


def collate_crops(items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(waves, lengths, targets, pairs, files): the batch's crops, then their partners; ``targets`` (N, 1 + heads)
    their MOS (column 0) and extra labels; ``pairs`` (P, 2) indexes a crop and its partner in that order; ``files``
    (N,) each crop's file (its row in the training set)."""
    partners = [(k, p) for k, (*_, p) in enumerate(items) if p is not None]
    crops = [(w, t, i) for w, t, i, _ in items] + [p for _, p in partners]
    wav, lengths = pad_batch([w for w, _, _ in crops])
    pairs = torch.tensor([[k, len(items) + q] for q, (k, _) in enumerate(partners)], dtype=torch.long).reshape(-1, 2)
    files = torch.tensor([i for _, _, i in crops], dtype=torch.long)
    return wav, lengths, torch.from_numpy(np.stack([t for _, t, _ in crops])), pairs, files


# ---------------------------------------------------------------------------------------------- the model


def build_finetune_model(
    init: str | None,
    from_scratch: bool,
    preset: str = "small",
    projection_head: bool = False,
    seed: int = 0,
    heads: Sequence[str] = (),
):
    """The network to fine-tune and a description of where it came from.

    ``init`` (a model name/folder/Hub id, normally a pretrained encoder) gives encoder weights; with
    ``from_scratch`` only its architecture is used (the paper's baseline: the same network, random weights),
    and without ``init`` the architecture is ``preset``. ``projection_head``: False (``--no-projection-head``)
    puts the MOS head on the encoder embedding and removes the projection head; True (``--projection-head``) puts
    it on the projection head's output. ``heads`` (``--heads``): the extra heads to train beside MOS; those
    ``init`` has keep their weights, the others start random (model.add_heads), and heads of ``init`` not named
    are dropped (nothing would train them while the encoder moves under them).
    """
    if init is None and not from_scratch:
        raise ValueError("choose where to start: --init PRETRAINED (a pretrained encoder) or --from-scratch")
    source = None
    if init is not None:
        folder = resolve_model(init)
        cfg, meta = read_config(folder)
        source = load_model(folder) if not from_scratch else None
    else:
        cfg, meta = config_from_preset(preset), {}
    keep = bool(projection_head)
    if keep and not cfg.projection_head:
        raise ValueError(
            f"{init}: --projection-head needs a projection head, and this encoder has none "
            "(pretrained with --no-projection-head); leave out --projection-head"
        )
    cfg = dataclasses.replace(cfg, projection_head=keep, mos_input="projection" if keep else "embedding")
    torch.manual_seed(seed)
    model = JSQA(cfg)
    if source is not None:
        target = model.state_dict()  # every tensor whose name and shape fit (a kept head's MOS head does not)
        state = {k: v for k, v in source.state_dict().items() if k in target and v.shape == target[k].shape}
        missing = [
            k for k in target if k not in state and k.startswith("encoder.") and not k.startswith("encoder.frontend.")
        ]
        if missing:
            raise ValueError(f"{init}: encoder weights do not fit the network (missing {missing[:3]})")
        model.load_state_dict(state, strict=False)
    dropped = [h for h in cfg.extra_heads if h not in heads]
    model = add_heads(drop_heads(model, keep=tuple(heads)), list(heads))
    provenance = {
        "kind": "scratch" if source is None else "pretrained",
        "model": None if init is None else str(init),
        "model_stage": meta.get("stage"),
        "preset": cfg.preset,
        "projection_head": keep,
        **({"dropped_heads": dropped} if dropped else {}),
    }
    return model, provenance


# ---------------------------------------------------------------------------------------------- training

# Parameters that train at --lr-head: the MOS head and the extra heads (--heads), and the side inputs (flatness,
# phase, echo: model.SIDE_INPUTS, added by model.add_flatness_bands and the like), which start from zero in a trained
# network and learn little at the encoder's rate; --lr-flatness gives the flatness input a rate of its own.
FLATNESS_INPUT = f"encoder.stem.{SIDE_INPUTS['flatness_bands']}."
HEAD_RATE = ("mos_head.", "heads.", *(f"encoder.stem.{conv}." for conv in SIDE_INPUTS.values()))
# Label columns with another meaning, which --heads cannot name.
RESERVED_COLUMNS = ("mos", "MOS", "path", "file", "filepath_deg", "filepath", "condition", "con", "group", "db")
FREEZABLE = ("encoder", "mos")  # what --freeze can hold for a whole run
TRAINING_DIR = "training"  # inside the model folder: checkpoint.pt, metrics.jsonl, options.json


@dataclass
class FinetuneOptions:
    """Everything ``jsqa finetune`` takes; defaults follow docs/finetuning.md (method.md where it is silent). The
    training options are spelt as in ``PretrainOptions``."""

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
    projection_head: bool = False  # False: MOS head on the encoder embedding; True: on the projection output
    # what it learns beside MOS
    heads: tuple[str, ...] = ()  # extra 1..5 heads, each trained on the labels' column of its name (empty: no loss)
    head_weight: float | dict[str, float] = 1.0  # their loss weight relative to MOS; a dict: per head ("*": others)
    distill: str | None = None  # a teacher's embeddings of the training files (labels.save_teacher_embeddings)
    distill_weight: float = 0.0  # weight of 1 - cosine(map(embedding), the teacher's); 0: off
    # optimisation
    steps: int = 3000
    batch_size: int = 32  # per process
    lr: float = 1e-4  # the encoder (and a kept projection head)
    lr_head: float = 1e-3  # the MOS head and extra heads (and flatness and phase inputs)
    lr_flatness: float | None = None  # the flatness input's rate (JSQAConfig.flatness_bands); None: lr_head
    weight_decay: float = 0.01  # on weight matrices and kernels, not biases or norms
    warmup_steps: int = 100
    freeze_encoder_steps: int = 0  # train only the MOS head for this many steps first
    freeze: tuple[str, ...] = ()  # held for the whole run: "encoder" (with its flatness/phase inputs), "mos" (its head)
    loss: str = "mse"  # mse or l1
    rank_weight: float = 0.0  # weight of the loss on score differences between versions of one reference (group)
    grad_clip: float = 1.0  # gradient-norm limit; 0: no clipping
    crop_s: tuple[float, float] = (4.0, 6.0)  # random training crop length range, seconds
    # validation (the scoring path: windows, file = mean of windows) and early stopping
    eval_every: int = 200  # 0: validate only at the last step
    early_stop: str = "pcc"  # pcc (higher is better) or rmse (lower is better)
    patience: int = 5  # evaluations without improvement before stopping; 0: never stop early
    val_batch_size: int = 32
    window_s: float = WINDOW_S
    hop_s: float = HOP_S
    # machinery
    seed: int = 0
    device: str = "auto"
    workers: int | None = None  # DataLoader workers per process; None: distributed.default_workers(device)
    cache_audio: bool = False  # decode the training files once and keep them in RAM
    bf16: bool = True
    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = None  # stop (checkpointed) after this many steps of this invocation; then --resume
    checkpoint_every: int = 200  # 0: only when this invocation ends
    log_every: int = 20  # 0: no loss lines
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
    for name in ("batch_size", "val_batch_size"):
        if getattr(o, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if o.freeze_encoder_steps < 0 or o.rank_weight < 0:
        raise ValueError("--freeze-encoder-steps and --rank-weight must not be negative")
    given = [o.freeze] if isinstance(o.freeze, str) else list(o.freeze)  # names, or comma-separated strings
    o.freeze = tuple(part.strip() for item in given for part in item.split(",") if part.strip())
    if set(o.freeze) - set(FREEZABLE):
        raise ValueError(f"--freeze {','.join(o.freeze)}: choose from {', '.join(FREEZABLE)}")
    if set(FREEZABLE) <= set(o.freeze) and not o.heads:
        raise ValueError("--freeze encoder,mos leaves nothing to train: add --heads")
    if min(o.lr, o.lr_head, o.lr_flatness if o.lr_flatness is not None else 0) < 0:
        raise ValueError("--lr, --lr-head and --lr-flatness must not be negative")
    o.heads, o.head_weight = _check_heads(o.heads, o.head_weight)
    if not (math.isfinite(o.distill_weight) and o.distill_weight >= 0):
        raise ValueError(f"--distill-weight {o.distill_weight}: must be a number, 0 or more")
    if o.distill is not None and not o.distill_weight:
        raise ValueError("--distill needs --distill-weight W > 0 (the weight of its loss)")
    if o.distill is None and o.distill_weight:
        raise ValueError("--distill-weight needs --distill EMBEDDINGS (a teacher's embeddings of the training files)")
    if o.distill is not None:
        o.distill = str(o.distill)
    check_options(o)
    return o


def _check_heads(heads, weight) -> tuple[tuple[str, ...], dict[str, float]]:
    """``--heads`` (names, or one comma-separated string) and ``--head-weight`` (a number for every head, or
    {head: weight} with ``"*"`` for the heads it does not name, else 1.0) → (names, {head: weight}), or one line
    naming the mistake."""
    if isinstance(heads, str):
        heads = heads.split(",")
    heads = tuple(h.strip() for h in heads if h.strip())
    for h in heads:
        if not h.isidentifier() or h in RESERVED_COLUMNS:
            why = "is a labels column with another meaning" if h in RESERVED_COLUMNS else "is not a valid head name"
            raise ValueError(f"--heads {h}: {why} (names are identifiers, e.g. sig, bak, aux_dnsmos_ovrl)")
    if len(set(heads)) != len(heads):
        raise ValueError(f"--heads {','.join(heads)}: a head is named twice")
    if isinstance(weight, dict):
        weight = dict(weight)
        weights = dict.fromkeys(heads, float(weight.pop("*", 1.0)))
        unknown = [k for k in weight if k not in heads]
        if unknown:
            raise ValueError(f"--head-weight {unknown[0]}=...: {unknown[0]} is not one of --heads")
        weights.update({k: float(v) for k, v in weight.items()})
    else:
        if not heads and float(weight) != 1.0:
            raise ValueError("--head-weight weighs the extra heads of --heads; there are none")
        weights = dict.fromkeys(heads, float(weight))
    for h, w in weights.items():
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"--head-weight {h}={w}: must be a number, 0 or more")
    return heads, weights


def parse_head_weight(values: Sequence[str]) -> float | dict[str, float]:
    """``--head-weight`` as typed (repeatable): ``W`` for every extra head, ``NAME=W`` for one (it wins over ``W``)
    → what FinetuneOptions.head_weight takes."""
    default, per_head = None, {}
    for v in values:
        name, _, number = v.rpartition("=")
        try:
            w = float(number)
        except ValueError:
            raise ValueError(f"--head-weight {v}: give a number W, or NAME=W for one head") from None
        if name:
            per_head[name.strip()] = w
        else:
            default = w
    if not per_head:
        return 1.0 if default is None else default
    return {"*": default, **per_head} if default is not None else per_head


def load_finetune_data(opts: FinetuneOptions) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(train, val, a description for the model's metadata) from a NISQA corpus or labelled CSVs; each has a column
    per extra head (``--heads``: 1..5, NaN where a file has no label)."""
    heads = opts.heads
    if opts.nisqa_root is not None:
        train = read_nisqa(opts.nisqa_root, opts.train_db, heads)
        val = read_nisqa(opts.nisqa_root, opts.val_db, heads)
        info = {
            "source": "nisqa",
            "nisqa_root": str(opts.nisqa_root),
            "train_db": list(opts.train_db),
            "val_db": list(opts.val_db),
        }
    else:
        csvs, vcsvs = csv_list(opts.train_csv), csv_list(opts.val_csv)
        train = pd.concat([read_labelled_csv(c, heads) for c in csvs], ignore_index=True)
        vals = [read_labelled_csv(c, heads) for c in vcsvs]
        if len(vals) > 1:  # conditions are named per corpus: qualify them so that two CSVs' conditions never merge
            vals = [
                v.assign(condition=[pd.NA if pd.isna(c) else f"{name}:{c}" for c in v["condition"]])
                for v, name in zip(vals, csv_names(vcsvs))
            ]
        val = pd.concat(vals, ignore_index=True)
        info = {
            "source": "csv",
            "train_csv": str(csvs[0]) if len(csvs) == 1 else [str(c) for c in csvs],
            "val_csv": str(vcsvs[0]) if len(vcsvs) == 1 else [str(c) for c in vcsvs],
        }
    for name, df in (("train", train), ("val", val)):
        if not len(df):
            raise ValueError(f"the {name} set is empty")
    for h in heads:
        if h not in train.columns:
            where = (
                f"the NISQA corpus has no column {h!r}" if opts.nisqa_root else f"no training CSV has a column {h!r}"
            )
            raise ValueError(f"--heads {h}: {where} (the labels of that head)")
        if train[h].isna().all():
            raise ValueError(f"--heads {h}: the column {h!r} is empty in every training row")
    train, val = (df.assign(**{h: np.nan for h in heads if h not in df.columns}) for df in (train, val))
    info.update(train_files=len(train), val_files=len(val), train_mos_mean=round(float(train["mos"].mean()), 4))
    if heads:
        info["head_labels"] = {
            h: {"train": int(train[h].notna().sum()), "val": int(val[h].notna().sum())} for h in heads
        }
    return train, val, info


def load_teacher(path: str, train_paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``--distill``: the teacher's embedding of each training file ((files, D), zeros where it has none) and which
    files have one, matched on labels.path_key; none matched is one line."""
    paths, emb = load_teacher_embeddings(path)
    rows = match_paths(train_paths, paths)
    has = rows >= 0
    if not has.any():
        raise ValueError(
            f"--distill {path}: none of its {len(paths)} files is a training file (paths are matched as the labels "
            f"resolve them, e.g. {train_paths[0]} against {paths[0] if paths else 'nothing'})"
        )
    table = np.zeros((len(rows), emb.shape[1]), np.float32)
    table[has] = emb[rows[has]]
    return table, has


def _gather(share: np.ndarray, n: int, d) -> np.ndarray:
    """Each rank's share (files rank::world) of an array, gathered back into file order on every rank."""
    if d is None or not d.enabled:
        return share
    shares = [None] * d.world_size
    dist.all_gather_object(shares, share)
    out = np.full((n, *share.shape[1:]), np.nan)
    for r, part in enumerate(shares):
        out[r :: d.world_size] = part
    return out


def validate(
    model,
    waves: Sequence[np.ndarray],
    mos: np.ndarray,
    conditions: pd.Series | None,
    d=None,
    *,
    batch_size: int = 32,
    window_s: float = WINDOW_S,
    hop_s: float = HOP_S,
    heads: pd.DataFrame | None = None,
) -> tuple[dict, np.ndarray]:
    """Score this rank's share of the validation files (``waves`` = files rank::world) through the scoring path
    (:func:`jsqa_cli.scoring.score_waveforms`), gather the shares, and measure them against ``mos``.

    Returns (metrics: n, rmse, mae, pcc, srcc, and ``condition`` with the same per condition when ``conditions``
    has values; the predictions). ``heads``: the extra heads' labels (a column per head of the model, NaN: none);
    then every head is scored in the same pass and measured on the files that have a label, under
    ``metrics["heads"]``. Every rank returns the same."""
    model = unwrap(model)
    device = d.device if d is not None else next(model.parameters()).device
    outputs = model.config.outputs if heads is not None and len(heads.columns) else None  # all in one pass
    scores = score_waveforms(
        model, waves, batch_size=batch_size, device=device, window_s=window_s, hop_s=hop_s, outputs=outputs
    )
    if outputs is None:
        scores = {"mos": scores}
    scores = {k: _gather(v, len(mos), d) for k, v in scores.items()}
    pred = scores["mos"]
    metrics = compute_metrics(pred, mos)
    if conditions is not None and conditions.notna().any():
        cm = condition_means(
            pd.DataFrame({"condition": np.asarray(conditions, dtype=object), "mos": mos, "mos_pred": pred})
        )
        metrics["condition"] = compute_metrics(cm["mos_pred"], cm["mos"])
    if outputs is not None:  # over the files with a label
        metrics["heads"] = {h: compute_metrics(scores[h], heads[h].to_numpy(float)) for h in model.config.extra_heads}
    return metrics, pred


class Student(nn.Module):
    """The network as fine-tuning runs it (and DDP wraps it): every head's score (B, 1 + heads), and with
    ``distill_map`` (``--distill``) the pooled embedding mapped to the teacher's space (B, D_teacher), else None.
    The map trains with the model but is not part of it: the saved model never has it."""

    def __init__(self, model: JSQA, distill_map: nn.Module | None = None):
        super().__init__()
        self.model, self.distill_map = model, distill_map

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        emb = self.model.embed(wav, lengths)
        mapped = self.distill_map(emb) if self.distill_map is not None else None
        return self.model.scores_from_embedding(emb), mapped


def masked_loss(loss_fn, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per column (head) of (N, heads) predictions: ``loss_fn`` over the rows whose target is not NaN (0 where a
    column has none). Every prediction stays in the graph (weight 0), so DDP sees every head's gradient."""
    labelled = ~torch.isnan(target)
    err = loss_fn(pred, torch.where(labelled, target, pred.detach()), reduction="none") * labelled
    return err.sum(0) / labelled.sum(0).clamp(min=1)


class FinetuneTask(Task):
    """MOS regression (plus the extra heads of ``--heads``, the ranking loss of ``--rank-weight`` and the
    representation loss of ``--distill``), plugged into :func:`jsqa_cli.train.train`: two learning rates, a
    frozen-then-free encoder, validation through the scoring path, the best model saved.

    ``teacher``: (training files, D_teacher) embeddings, a row per training file (zeros where it has none), and
    which rows have one; then ``distill_map`` (D_model → D_teacher) trains at --lr-head and is checkpointed with the
    task, never saved with the model."""

    name, items = "finetune", "files"

    def __init__(
        self,
        opts: FinetuneOptions,
        d,
        model: JSQA,
        dataset: MOSCrops,
        val_waves,
        val_df: pd.DataFrame,
        workers: int,
        out: Path,
        provenance: dict,
        teacher: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.opts, self.d, self.model, self.dataset, self.workers = opts, d, model, dataset, workers
        self.val_waves, self.val_df, self.out, self.provenance = val_waves, val_df, out, provenance
        # the best step: by MOS, or with the MOS head held (--freeze mos) by the extra heads' mean
        held = "mos" in opts.freeze
        self.metric = f"val_{'heads_' if held else ''}{opts.early_stop}"
        self.higher_is_better = opts.early_stop == "pcc"
        self.loss_fn = F.mse_loss if opts.loss == "mse" else F.l1_loss
        heads = model.config.extra_heads
        self.head_weights = torch.tensor([opts.head_weight[h] for h in heads], device=d.device)
        self.distill_map = self.teacher = self.has_teacher = None
        if teacher is not None:
            emb, has = teacher
            self.teacher = torch.from_numpy(emb).to(d.device)
            self.has_teacher = torch.from_numpy(has).to(d.device)
            self.distill_map = nn.Linear(model.config.d_model, emb.shape[1]).to(d.device)  # seeded: the model's seed
        self.net, self.frozen = None, None
        self.last_metrics, self.best_metrics = {}, {}
        self.parts: dict[str, float] = {}  # the loss's terms summed since the last log line, and their count
        self.per_rank = len(dataset) // d.world_size

    def param_groups(self) -> list[dict]:
        """The encoder (and a kept projection head) at --lr, HEAD_RATE's parameters at --lr-head (a flatness input
        at --lr-flatness when given)."""
        o = self.opts

        def group(name: str) -> str:
            if not name.startswith(HEAD_RATE):
                return "encoder"
            return "flatness" if o.lr_flatness is not None and name.startswith(FLATNESS_INPUT) else "head"

        groups = param_groups(
            self.model, {"encoder": o.lr, "head": o.lr_head, "flatness": o.lr_flatness}, group, o.weight_decay
        )
        if self.distill_map is not None:  # --distill's map, at the head's rate
            groups += param_groups(self.distill_map, {"distill": o.lr_head}, lambda n: "distill", o.weight_decay)
        return groups

    def batches(self, step: int):
        o, d = self.opts, self.d
        sampler = PairSampler(len(self.dataset), o.seed, d.rank, d.world_size, start=step * o.batch_size)
        yield from DataLoader(
            self.dataset,
            batch_size=o.batch_size,
            sampler=sampler,
            num_workers=self.workers,
            collate_fn=collate_crops,
            pin_memory=d.device.type == "cuda",
            persistent_workers=self.workers > 0,
            prefetch_factor=4 if self.workers > 0 else None,
            generator=torch.Generator().manual_seed(o.seed),
        )  # never the global RNG: exact resume

    def trainable(self, name: str, frozen: bool) -> bool:
        """Whether parameter ``name`` trains: not while the encoder is frozen (--freeze-encoder-steps: all but
        HEAD_RATE's; --freeze encoder: all of it, its flatness and phase inputs too), nor a --freeze mos head."""
        held = self.opts.freeze
        if name.startswith("mos_head."):
            return "mos" not in held
        if "encoder" in held and name.startswith("encoder."):
            return False
        return not (frozen and not name.startswith(HEAD_RATE))

    def forward(self, batch, step: int) -> torch.Tensor:
        frozen = step < self.opts.freeze_encoder_steps
        if frozen != self.frozen:  # the encoder's parameters frozen or not (DDP is rebuilt when that changes)
            for name, p in self.model.named_parameters():
                p.requires_grad_(self.trainable(name, frozen))
            self.net, self.frozen = Student(self.model, self.distill_map), frozen
            if self.d.enabled:
                self.net = torch.nn.parallel.DistributedDataParallel(
                    self.net, device_ids=[self.d.device.index] if self.d.device.type == "cuda" else None
                )
        self.model.train()
        wav, lengths = batch[0].to(self.d.device, non_blocking=True), batch[1].to(self.d.device, non_blocking=True)
        return self.net(wav, lengths)

    def loss(self, outputs, batch) -> tuple[torch.Tensor, int]:
        scores, mapped = outputs
        targets, pairs = batch[2].to(self.d.device), batch[3].to(self.d.device)
        scores = scores.float()
        pred, mos = scores[:, 0], targets[:, 0]
        loss = self.loss_fn(pred, mos)
        parts = {"loss_mos": loss}
        if len(pairs):  # versions of one reference: their score difference should be their label difference
            a, b = pairs[:, 0], pairs[:, 1]
            loss = loss + self.opts.rank_weight * self.loss_fn(pred[a] - pred[b], mos[a] - mos[b])
        if len(self.head_weights):  # mean over the extra heads, each over the crops that have its label
            parts["loss_heads"] = (self.head_weights * masked_loss(self.loss_fn, scores[:, 1:], targets[:, 1:])).mean()
            loss = loss + parts["loss_heads"]
        if mapped is not None:  # 1 - cosine to the teacher's embedding of each crop's file, where it has one
            files = batch[4].to(self.d.device)
            has = self.has_teacher[files].float()
            cos = F.cosine_similarity(mapped.float(), self.teacher[files], dim=-1)
            parts["loss_distill"] = ((1 - cos) * has).sum() / has.sum().clamp(min=1)
            loss = loss + self.opts.distill_weight * parts["loss_distill"]
        if len(parts) > 1:
            for k, v in parts.items():
                self.parts[k] = self.parts.get(k, 0.0) + float(v.detach())
            self.parts["n"] = self.parts.get("n", 0) + 1
        return loss, len(mos) - len(pairs)

    def evaluate(self, step: int) -> dict:
        o = self.opts
        heads = self.model.config.extra_heads
        metrics, _ = validate(
            self.model,
            self.val_waves,
            self.val_df["mos"].to_numpy(float),
            self.val_df["condition"],
            self.d,
            batch_size=o.val_batch_size,
            window_s=o.window_s,
            hop_s=o.hop_s,
            heads=self.val_df[list(heads)] if heads else None,
        )
        self.last_metrics = metrics
        return {
            **{f"val_{k}": v for k, v in metrics.items() if k not in ("condition", "heads")},
            **{f"val_condition_{k}": v for k, v in metrics.get("condition", {}).items()},
            **{f"val_{h}_{k}": v for h, m in metrics.get("heads", {}).items() for k, v in m.items()},
            **{
                f"val_heads_{k}": float(np.mean([m[k] for m in metrics["heads"].values()]))
                for k in ("pcc", "rmse")
                if metrics.get("heads")
            },
        }

    def save_best(self, step: int, record: dict) -> None:
        self.best_metrics = self.last_metrics
        save_model(
            self.model, self.out, {**self.provenance, "best_step": step, **validation_metadata(self.best_metrics)}
        )

    def log_extra(self, step: int) -> dict:
        n = self.parts.pop("n", 0)
        parts = {k: all_reduce_mean(v / max(n, 1), self.d) for k, v in sorted(self.parts.items())}
        self.parts = {}
        return {"epoch": step * self.opts.batch_size // self.per_rank, "frozen_encoder": bool(self.frozen), **parts}

    def state_dict(self) -> dict:
        state = {"best_metrics": self.best_metrics}
        if self.distill_map is not None:
            state["distill_map"] = {k: v.detach().cpu() for k, v in self.distill_map.state_dict().items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.best_metrics = state.get("best_metrics", {})
        if self.distill_map is not None:
            if "distill_map" not in state:
                raise ValueError(
                    "the checkpoint has no --distill map (a run without --distill); --overwrite starts again"
                )
            self.distill_map.load_state_dict(state["distill_map"])


def validation_metadata(metrics: dict) -> dict:
    """config.json's ``validation`` (MOS: per file and per condition) and ``validation_heads`` (per extra head)."""
    out = {"validation": {k: v for k, v in metrics.items() if k != "heads"}}
    if metrics.get("heads"):
        out["validation_heads"] = metrics["heads"]
    return out


RUN_ARTEFACTS = (CONFIG_NAME, WEIGHTS_NAME, TRAINING_DIR)


def finetune(options: FinetuneOptions | None = None, **overrides) -> Path:
    """Fine-tune for MOS; returns the model folder (``options.output``) holding the best validation step."""
    opts = _options(options, overrides)
    with distributed(opts.device) as d:
        return _finetune(opts, d)


def _finetune(opts: FinetuneOptions, d) -> Path:
    out = prepare_run_folder(
        opts.output,
        RUN_ARTEFACTS,
        f"{TRAINING_DIR}/{CHECKPOINT_NAME}",
        resume=opts.resume,
        overwrite=opts.overwrite,
        what="model or a fine-tuning run",
        d=d,
    )
    run_dir = out / TRAINING_DIR
    say = (lambda *a: None) if (opts.quiet or not d.is_main) else print
    workers = default_workers(opts.device) if opts.workers is None else opts.workers
    # before minutes of checking and decoding: the network to start from exists and has what the options train
    start = read_config(resolve_model(opts.init))[0] if opts.init is not None else config_from_preset(opts.preset)
    if opts.lr_flatness is not None and not start.flatness_bands:
        raise ValueError(
            f"--lr-flatness: {opts.init or '--preset ' + opts.preset} has no flatness input "
            "(flatness_bands is 0; see docs/finetuning.md)"
        )

    # ---- data: every file checked up front, validation audio decoded once (this rank's share)
    train_df, val_df, data_info = load_finetune_data(opts)
    if len(train_df) < d.world_size:
        raise ValueError(f"{len(train_df)} training files for {d.world_size} ranks")
    teacher = load_teacher(opts.distill, list(train_df["path"])) if opts.distill else None
    train_seconds = check_files(train_df, "train")
    check_files(val_df, "val")
    val_waves = list(decode_all(list(val_df["path"].iloc[d.rank :: d.world_size]), workers))
    cache = None
    if opts.cache_audio:
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if d.enabled else 1
        if d.is_main and (msg := cache_memory_warning(train_seconds, len(train_df), local_ranks)):
            warnings.warn(msg, stacklevel=2)
        cache = decode_all(list(train_df["path"]), workers, dtype=np.int16)  # 16-bit: half the RAM
        say(f"Cached {len(cache)} training files in RAM ({cache.nbytes / 2**30:.2f} GiB).")
    groups = train_df["group"] if opts.rank_weight > 0 and "group" in train_df.columns else None
    seed_everything(opts.seed)
    model, init_info = build_finetune_model(
        opts.init, opts.from_scratch, opts.preset, opts.projection_head, opts.seed, opts.heads
    )
    model.to(d.device)
    targets = train_df[model.config.outputs].to_numpy(np.float32)  # MOS, then the extra heads (NaN: no label)
    dataset = MOSCrops(train_df["path"], targets, opts.crop_s, cache, opts.seed, groups)
    if opts.rank_weight > 0 and not any(dataset.others):
        raise ValueError(
            "--rank-weight needs training files that share a `group` (versions of one clean reference, "
            "as training/simulate_mos.py --versions writes them); no two training rows do"
        )

    # ---- the shared loop
    provenance = {
        "stage": "finetuned",
        "task": "mos",
        "init": init_info,
        "data": data_info,
        "training": {
            "preset": model.config.preset,
            "parameters": model.num_parameters,
            "world_size": d.world_size,
            "hardware": d.hardware,
            "global_batch_size": opts.batch_size * d.world_size,
            **({"heads": list(opts.heads), "head_weight": opts.head_weight} if opts.heads else {}),
            **{
                k: getattr(opts, k)
                for k in (
                    "steps",
                    "lr",
                    "lr_head",
                    "lr_flatness",
                    "weight_decay",
                    "warmup_steps",
                    "freeze_encoder_steps",
                    "freeze",
                    "loss",
                    "rank_weight",
                    "grad_clip",
                    "crop_s",
                    "eval_every",
                    "early_stop",
                    "patience",
                    "seed",
                )
                if getattr(opts, k) is not None
            },
        },
        "scoring": {"window_s": opts.window_s, "hop_s": opts.hop_s},
    }
    if teacher is not None:
        provenance["training"].update(
            distill=opts.distill,
            distill_weight=opts.distill_weight,
            distill_files=int(teacher[1].sum()),
            distill_dim=int(teacher[0].shape[1]),
        )
        say(f"Distilling a teacher's embeddings ({teacher[0].shape[1]} dims) of {int(teacher[1].sum())} files.")
    task = FinetuneTask(opts, d, model, dataset, val_waves, val_df, workers, out, provenance, teacher)
    write_options(run_dir, {**asdict(opts), "world_size": d.world_size, "workers": workers}, d)
    say(
        f"Fine-tuning {model.config.preset} ({model.num_parameters / 1e6:.2f} M parameters, {init_info['kind']}"
        f"{' from ' + str(opts.init) if init_info['kind'] == 'pretrained' else ''}"
        f"{', heads ' + ' '.join(model.config.outputs) if opts.heads else ''}) on {len(train_df)} files, "
        f"validating on {len(val_df)}; batch {opts.batch_size}×{d.world_size}, {opts.steps} steps, "
        f"device {d.device}, {workers} loader workers."
    )
    result = train(task, opts, d, run_dir, opts.steps, opts.warmup_steps)

    if d.is_main and result.finished:  # final provenance: how far the run went and why it ended
        config = json.loads((out / CONFIG_NAME).read_text())
        config["metadata"].update(
            provenance,
            best_step=result.best_step,
            **validation_metadata(task.best_metrics),
            steps_run=result.step,
            early_stopped=result.early_stopped,
        )
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str) + "\n")
        m = task.best_metrics
        say(
            f"Model saved to {out}: best step {result.best_step} of {result.step}"
            f"{' (stopped early)' if result.early_stopped else ''}, validation PCC {m.get('pcc', math.nan):.3f}, "
            f"RMSE {m.get('rmse', math.nan):.3f}."
        )
    elif d.is_main:
        say(f"Stopped at step {result.step} of {opts.steps}; continue with --resume.")
    if d.enabled:
        dist.barrier()
    return out
