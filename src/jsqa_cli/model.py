"""The JSQA network, its presets, and model folders (``config.json`` + ``model.safetensors``).

    waveform (B, T) at 16 kHz
      → log-mel (no per-utterance normalisation: level is a quality cue)
        [+ log spectral flatness per linear-frequency band (``flatness_bands`` > 0): the fine structure that
         mel bands blur, e.g. harmonics a codec replaced with noise]
        [+ group-delay deviation per linear-frequency band (``phase_bands`` > 0): where in each frame the energy
         sits, from the STFT's phase, which log-mel discards: the traces of packet-loss concealment and clipping]
        [+ lag similarity in 50 ms lag bands (``echo_bands`` > 0): how much each frame's spectral shape repeats
         one 30-530 ms earlier, the mark an echo leaves]
      → conv stem (time subsampling ×4)
      → pre-LN Transformer with key-padding masks
      → attention pooling → LayerNorm → embedding (B, D)
      → projection head (pretraining only)  /  MOS head → 1 + 4·sigmoid ∈ [1, 5]
                                                   [+ extra heads beside it, same form: P.835 ``sig`` and ``bak``]

Every step masks padded frames, so a file's score does not depend on what it is batched with.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio
from safetensors.torch import load_file, save_file

from jsqa_cli import __version__
from jsqa_cli.audio import SAMPLE_RATE

# Names → folders live in resolve (bundled names, folders, Hub ids); re-exported here, where users look for them.
from jsqa_cli.resolve import (
    CARD_NAME,
    CONFIG_NAME,
    DEFAULT_MODEL,
    MODEL_TYPE,
    WEIGHTS_DIR,
    WEIGHTS_NAME,
    ModelError,
    bundled_models,
    default_model_name,
    read_config_dict,
    resolve,
    resolve_model,
)

__all__ = [
    "JSQA", "JSQAConfig", "PRESETS", "P835_HEADS", "build_model", "add_heads", "drop_heads", "config_from_preset",
    "add_flatness_bands", "add_phase_bands", "add_echo_bands", "save_model",
    "read_config", "load_model", "ModelError", "CARD_NAME", "CONFIG_NAME", "DEFAULT_MODEL", "MODEL_TYPE",
    "WEIGHTS_DIR", "WEIGHTS_NAME", "bundled_models", "default_model_name", "resolve_model",
]  # fmt: skip

# Fixed affine map of natural-log mel power to roughly zero mean / unit variance on speech at typical levels.
LOGMEL_OFFSET = 5.0
LOGMEL_SCALE = 4.5
# The same for log spectral flatness (log of geometric over arithmetic mean power within a band; 0 for white
# noise's expected spectrum, down to about -2 for voiced speech's harmonics in the lowest bands).
FLATNESS_OFFSET = 1.0
FLATNESS_SCALE = 0.5
FLATNESS_MIN = -4.0
# The same for the group-delay deviation (group_delay_deviation: radians in [0, pi], 0 for the zero-phase main
# lobe of a steady component at the frame's centre). Measured over every frame of 40 LibriSpeech train-clean-100
# utterances, 8 bands (training/phase_stats.py): mean 0.433, standard deviation 0.200 (about 0.42 for white noise;
# more spread where frames straddle a gap). Digital silence gives 0, i.e. -2.15 after this map.
PHASE_OFFSET = -0.43
PHASE_SCALE = 0.2
# Lag similarity (lag_similarity): band b holds the highest cosine similarity between a frame's log-mel shape and
# the shapes ECHO_FIRST_LAG + ECHO_BAND_LAGS * b ... + ECHO_BAND_LAGS - 1 frames earlier (10 ms each), so 10 bands
# reach 520 ms. The map below centres it for clean speech (about 0.2, spread 0.2; an echo lifts its lag's band).
ECHO_FIRST_LAG = 3  # 30 ms: frames that share no samples of the 25 ms window
ECHO_BAND_LAGS = 5
ECHO_OFFSET = -0.2
ECHO_SCALE = 0.2

# Scores a model can give beside "mos", each on 1..5 (JSQAConfig.extra_heads): ITU-T P.835's speech signal
# (SIG: 5 = not distorted) and background (BAK: 5 = not noticeable). Heads with other names are training aids
# (e.g. a teacher's score, "aux_*"); bundle_model drops them and scoring reports only these.
P835_HEADS = ("sig", "bak")

# Input channels beside the log-mel (JSQAConfig field → the stem's first convolution for them), in channel order.
SIDE_INPUTS = {"flatness_bands": "conv1_flatness", "phase_bands": "conv1_phase", "echo_bands": "conv1_echo"}


@dataclass
class JSQAConfig:
    """Everything needed to rebuild the network. Saved as ``config.json`` next to the weights."""

    preset: str = "small"
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_mels: int = 64
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 4
    ff_dim: int = 768
    dropout: float = 0.1
    max_positions: int = 4096  # tokens (40 ms each after the stem): longer inputs are refused, use windows
    projection_head: bool = True
    proj_dim: int = 128
    head_hidden: int = 128
    mos_input: str = "embedding"  # what the MOS head reads: "embedding" (encoder output) or "projection"
    flatness_bands: int = 0  # extra input channels: log spectral flatness in this many equal linear bands; 0 = none
    phase_bands: int = 0  # extra input channels: group-delay deviation in this many equal linear bands; 0 = none
    echo_bands: int = 0  # extra input channels: lag similarity in this many 50 ms lag bands from 30 ms; 0 = none
    extra_heads: list[str] = field(default_factory=list)  # more 1..5 outputs beside "mos" (P835_HEADS, "aux_*")

    @property
    def outputs(self) -> list[str]:
        """The scores the model gives, "mos" first."""
        return ["mos", *self.extra_heads]

    @property
    def min_samples(self) -> int:
        return self.n_fft

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Valid STFT frames (center=False) for each signal length; short signals are padded to one frame."""
        n = torch.clamp(num_samples, min=self.n_fft)
        return 1 + torch.div(n - self.n_fft, self.hop_length, rounding_mode="floor")


PRESETS: dict[str, dict] = {
    # tests and quick experiments: well under 1 M parameters
    "tiny": dict(n_mels=32, d_model=32, n_layers=1, n_heads=2, ff_dim=64, proj_dim=32, head_hidden=32),
    # the CPU default: about 2 M parameters
    "small": dict(n_mels=64, d_model=192, n_layers=4, n_heads=4, ff_dim=768, proj_dim=128, head_hidden=128),
    # the paper's scale: about 26 M parameters
    "base": dict(n_mels=80, d_model=512, n_layers=8, n_heads=8, ff_dim=2048, proj_dim=128, head_hidden=128),
}


def config_from_preset(preset: str = "small", **overrides) -> JSQAConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return JSQAConfig(preset=preset, **{**PRESETS[preset], **overrides})


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths → (B, max_len) bool mask, True where valid."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def group_delay_deviation(spec: torch.Tensor, bands: int) -> torch.Tensor:
    """(B, n_fft // 2 + 1, frames) complex STFT → (B, bands, frames): per frame and band of equal linear width, the
    power-weighted mean absolute group-delay deviation, in radians ([0, pi]; 0 where the band is silent).

    The phase step from bin k to k + 1 is -2 pi n0 / n_fft for a component at sample n0 of the frame; the deviation
    is that step less the one of the frame's centre (n0 = n_fft / 2, where torch.stft centres the window: a step of
    -pi). A steady component (a harmonic, a tone) has a zero-phase main lobe there, so deviation 0; energy off the
    centre (an onset, a gap that concealment filled, the edges of clipped peaks) or noise deviates. Computed as the
    angle of X[k + 1] · conj(X[k]) · e^(j pi), weighted by its magnitude |X[k]| |X[k + 1]| (the phase of bins
    without energy means nothing), over the n_fft // 2 bin pairs below Nyquist."""
    cross = -spec[:, 1:] * spec[:, :-1].conj()  # (B, n_fft // 2, frames)
    weight = cross.abs()
    deviation = torch.angle(cross).abs()
    num = (weight * deviation).unflatten(1, (bands, -1)).sum(2)
    return num / (weight.unflatten(1, (bands, -1)).sum(2) + 1e-10)


def lag_similarity(logmel: torch.Tensor, n_frames: torch.Tensor, bands: int) -> torch.Tensor:
    """(B, n_mels, frames) log-mel → (B, bands, frames): per frame, the highest cosine similarity between its
    spectral shape and the shape of a frame ECHO_FIRST_LAG ... ECHO_FIRST_LAG + ECHO_BAND_LAGS * bands - 1 frames
    earlier, one band per ECHO_BAND_LAGS lags (0 where there is no earlier frame).

    The shape is the log-mel frame less the input's mean log-mel (over its ``n_frames`` valid frames: the room and
    the microphone) and less its own mean (the level). An echo (a copy ``d`` ms later) fills the pauses and the
    quieter frames with an attenuated copy of the frame ``d`` ms before, so the band holding ``d`` rises; speech
    alone repeats a shape only now and then."""
    mask = lengths_to_mask(n_frames, logmel.shape[-1])[:, None, :]
    mean = (logmel * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    shape = logmel - mean
    shape = shape - shape.mean(1, keepdim=True)
    shape = shape / (shape.norm(dim=1, keepdim=True) + 1e-6) * mask
    frames = shape.shape[-1]
    lags = []
    for lag in range(ECHO_FIRST_LAG, ECHO_FIRST_LAG + ECHO_BAND_LAGS * bands):
        lag = min(lag, frames)  # no earlier frame that far back: 0
        lags.append(F.pad((shape[..., lag:] * shape[..., : frames - lag]).sum(1), (lag, 0)))  # (B, frames)
    return torch.stack(lags, 1).unflatten(1, (bands, ECHO_BAND_LAGS)).amax(2)


class LogMel(nn.Module):
    """Log-mel features, and with ``flatness_bands`` the bands' log spectral flatness stacked under them, then with
    ``phase_bands`` the bands' group-delay deviation (all from one STFT), then with ``echo_bands`` the log-mel's
    lag similarity."""

    def __init__(self, cfg: JSQAConfig):
        super().__init__()
        self.cfg = cfg
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
            center=False,
            power=2.0,
        )
        bins = cfg.n_fft // 2  # the Nyquist bin is left out, so that the bands split evenly
        for name in ("flatness_bands", "phase_bands"):
            if getattr(cfg, name) and bins % getattr(cfg, name):
                raise ValueError(f"{name}={getattr(cfg, name)} must divide the {bins} STFT bins below Nyquist")

    def _complex_spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        s = self.mel.spectrogram  # its power=2.0 path is this, then .abs().pow(2.0)
        return torchaudio.functional.spectrogram(
            wav,
            s.pad,
            s.window,
            s.n_fft,
            s.hop_length,
            s.win_length,
            None,
            s.normalized,
            s.center,
            s.pad_mode,
            s.onesided,
        )

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if wav.shape[-1] < self.cfg.n_fft:
            wav = F.pad(wav, (0, self.cfg.n_fft - wav.shape[-1]))
        n_frames = self.cfg.num_frames(lengths)
        with torch.autocast(device_type=wav.device.type, enabled=False):
            if self.cfg.phase_bands:
                spec = self._complex_spectrogram(wav.float())
                power = spec.abs().pow(2.0)
            else:
                power = self.mel.spectrogram(wav.float())  # (B, n_fft // 2 + 1, frames)
            feats = (torch.log(self.mel.mel_scale(power) + 1e-8) + LOGMEL_OFFSET) / LOGMEL_SCALE
            if self.cfg.flatness_bands:
                bands = power[:, : self.cfg.n_fft // 2].unflatten(1, (self.cfg.flatness_bands, -1)) + 1e-10
                flatness = torch.log(bands).mean(2) - torch.log(bands.mean(2))  # (B, bands, frames), <= 0
                flatness = flatness.clamp(min=FLATNESS_MIN)  # a pure tone's band would reach about -13
                feats = torch.cat([feats, (flatness + FLATNESS_OFFSET) / FLATNESS_SCALE], dim=1)
            if self.cfg.phase_bands:
                deviation = group_delay_deviation(spec, self.cfg.phase_bands)
                feats = torch.cat([feats, (deviation + PHASE_OFFSET) / PHASE_SCALE], dim=1)
            if self.cfg.echo_bands:
                similarity = lag_similarity(feats[:, : self.cfg.n_mels], n_frames, self.cfg.echo_bands)
                feats = torch.cat([feats, (similarity + ECHO_OFFSET) / ECHO_SCALE], dim=1)
        mask = lengths_to_mask(n_frames, feats.shape[-1])
        return feats * mask[:, None, :], n_frames


class ConvStem(nn.Module):
    """Two stride-2 convolutions over time (×4 subsampling); padded frames are zeroed before each one. Each kind of
    side input (JSQAConfig.flatness_bands, phase_bands, echo_bands: SIDE_INPUTS) has its own first convolution,
    added to the log-mel one's output, so that fine-tuning can train it at another rate (finetune.HEAD_RATE)."""

    def __init__(self, cfg: JSQAConfig):
        super().__init__()
        self.n_mels = cfg.n_mels
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.d_model, kernel_size=3, stride=2, padding=1)
        self.side = [(conv, getattr(cfg, field)) for field, conv in SIDE_INPUTS.items() if getattr(cfg, field)]
        for conv, bands in self.side:
            self.add_module(conv, nn.Conv1d(bands, cfg.d_model, kernel_size=3, stride=2, padding=1, bias=False))
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, kernel_size=3, stride=2, padding=1)

    @staticmethod
    def _out_len(n: torch.Tensor) -> torch.Tensor:
        return torch.div(n + 1, 2, rounding_mode="floor")  # ceil(n / 2) for kernel 3, stride 2, padding 1

    def _first(self, x: torch.Tensor) -> torch.Tensor:
        if not self.side:
            return self.conv1(x)
        y = self.conv1(x[:, : self.n_mels])
        start = self.n_mels  # channels: log-mel, then each side input in SIDE_INPUTS' order
        for conv, bands in self.side:
            y = y + getattr(self, conv)(x[:, start : start + bands])
            start += bands
        return y

    def forward(self, x: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in (self._first, self.conv2):
            x = F.gelu(conv(x))
            n = self._out_len(n)
            x = x * lengths_to_mask(n, x.shape[-1])[:, None, :]
        return x.transpose(1, 2), n  # (B, tokens, D)


def sinusoidal_positions(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10_000.0) / d))
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d // 2]
    return pe


class AttentionPool(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.score = nn.Linear(d, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = self.score(h).squeeze(-1).float().masked_fill(~mask, float("-inf"))
        w = torch.softmax(w, dim=-1).to(h.dtype)
        return torch.einsum("bt,btd->bd", w, h)


class Encoder(nn.Module):
    """waveform → embedding (B, D)."""

    def __init__(self, cfg: JSQAConfig):
        super().__init__()
        self.cfg = cfg
        self.frontend = LogMel(cfg)
        self.stem = ConvStem(cfg)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_positions, cfg.d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.n_heads, cfg.ff_dim, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.pool = AttentionPool(cfg.d_model)
        self.out_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[-1], dtype=torch.long, device=wav.device)
        feats, n = self.frontend(wav, lengths)
        x, n = self.stem(feats, n)
        if x.shape[1] > self.cfg.max_positions:
            raise ValueError(
                f"input of {x.shape[1]} tokens exceeds max_positions={self.cfg.max_positions}; "
                "score long audio in windows (jsqa_cli.audio.window_bounds)"
            )
        x = x + self.positions[: x.shape[1]].to(x.dtype)
        mask = lengths_to_mask(n, x.shape[1])
        # Inference on a batch without padding (e.g. full scoring windows) skips the mask: same result, and
        # PyTorch's fused CPU path runs up to 2x faster without its masked softmax.
        no_padding = not self.training and not torch.is_grad_enabled() and bool(mask.all())
        h = self.transformer(x, src_key_padding_mask=None if no_padding else ~mask)
        h = self.norm(h)
        return self.out_norm(self.pool(h, mask))


class JSQA(nn.Module):
    """Encoder + projection head (for contrastive pretraining) + MOS head (1..5)."""

    def __init__(self, cfg: JSQAConfig):
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.encoder = Encoder(cfg)
        self.projection = (
            nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, cfg.proj_dim)) if cfg.projection_head else None
        )
        if cfg.mos_input not in ("embedding", "projection"):
            raise ValueError(f"mos_input must be 'embedding' or 'projection', not {cfg.mos_input!r}")
        if cfg.mos_input == "projection" and not cfg.projection_head:
            raise ValueError("mos_input='projection' needs projection_head=True")
        head_in = cfg.proj_dim if cfg.mos_input == "projection" else d
        self.mos_head = nn.Sequential(nn.Linear(head_in, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, 1))
        if len(set(cfg.outputs)) != len(cfg.outputs) or not all(h.isidentifier() for h in cfg.outputs):
            raise ValueError(f"extra_heads must be distinct names other than 'mos', not {cfg.extra_heads!r}")
        self.heads = nn.ModuleDict(
            {
                h: nn.Sequential(nn.Linear(head_in, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, 1))
                for h in cfg.extra_heads
            }
        )
        self.metadata: dict = {}  # provenance, metrics, stage; saved in config.json
        self.name = f"untrained-{cfg.preset}"  # how scores name the model; load_model sets the name it was given

    def embed(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(wav, lengths)

    def project(self, emb: torch.Tensor) -> torch.Tensor:
        """The vectors the contrastive loss compares: projection head output, or the embedding itself."""
        return self.projection(emb) if self.projection is not None else emb

    def mos_from_embedding(self, emb: torch.Tensor) -> torch.Tensor:
        if self.config.mos_input == "projection":
            emb = self.projection(emb)
        return 1.0 + 4.0 * torch.sigmoid(self.mos_head(emb).squeeze(-1).float())

    def scores_from_embedding(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, len(config.outputs)): every head's score in [1, 5], in the order of ``config.outputs``."""
        if self.config.mos_input == "projection":
            emb = self.projection(emb)
        heads = [self.mos_head, *(self.heads[h] for h in self.config.extra_heads)]
        return 1.0 + 4.0 * torch.sigmoid(torch.cat([head(emb) for head in heads], dim=-1).float())

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """MOS prediction in [1, 5] for each signal in the batch."""
        return self.mos_from_embedding(self.embed(wav, lengths))

    def scores(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, len(config.outputs)): MOS and the extra heads' scores (``config.outputs`` names the columns)."""
        return self.scores_from_embedding(self.embed(wav, lengths))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(preset: str = "small", **overrides) -> JSQA:
    return JSQA(config_from_preset(preset, **overrides))


def add_flatness_bands(model: JSQA, bands: int) -> JSQA:
    """A copy of ``model`` that also reads ``bands`` log spectral flatness channels (JSQAConfig.flatness_bands).
    Their convolution starts at zero, so the copy scores exactly as ``model`` until fine-tuning teaches it to
    use them."""
    return _add_input(model, "flatness_bands", bands)


def add_phase_bands(model: JSQA, bands: int) -> JSQA:
    """A copy of ``model`` that also reads ``bands`` group-delay deviation channels (JSQAConfig.phase_bands).
    Their convolution starts at zero, so the copy scores exactly as ``model`` until fine-tuning teaches it to use
    them."""
    return _add_input(model, "phase_bands", bands)


def add_echo_bands(model: JSQA, bands: int) -> JSQA:
    """A copy of ``model`` that also reads ``bands`` lag-similarity channels (JSQAConfig.echo_bands). Their
    convolution starts at zero, so the copy scores exactly as ``model`` until fine-tuning teaches it to use them."""
    return _add_input(model, "echo_bands", bands)


def _add_input(model: JSQA, field_name: str, bands: int) -> JSQA:
    """A copy of ``model`` with ``bands`` more input channels of one kind (SIDE_INPUTS), through the stem's
    zero-initialised first convolution of their own."""
    conv = SIDE_INPUTS[field_name]
    if getattr(model.config, field_name):
        raise ValueError(f"the model already reads {getattr(model.config, field_name)} {field_name.replace('_', ' ')}")
    wide = JSQA(replace(model.config, **{field_name: bands}))
    nn.init.zeros_(getattr(wide.encoder.stem, conv).weight)
    missing, unexpected = wide.load_state_dict(model.state_dict(), strict=False)
    assert missing == [f"encoder.stem.{conv}.weight"] and not unexpected, (missing, unexpected)
    wide.metadata, wide.name = dict(model.metadata), model.name
    return wide.train(model.training).to(next(model.parameters()).device)


def add_heads(model: JSQA, names: list[str]) -> JSQA:
    """A copy of ``model`` with extra heads ``names`` (new ones randomly initialised; existing ones kept), e.g. to
    fine-tune a MOS-only model for P.835 ``sig`` and ``bak``. Its MOS is unchanged until it is trained."""
    new = [h for h in names if h not in model.config.extra_heads]
    if not new:
        return model
    wide = JSQA(replace(model.config, extra_heads=[*model.config.extra_heads, *new]))
    missing, unexpected = wide.load_state_dict(model.state_dict(), strict=False)
    assert all(k.startswith("heads.") for k in missing) and not unexpected, (missing, unexpected)
    wide.metadata, wide.name = dict(model.metadata), model.name
    return wide.train(model.training).to(next(model.parameters()).device)


def drop_heads(model: JSQA, keep: tuple[str, ...] = P835_HEADS) -> JSQA:
    """A copy of ``model`` without the extra heads not in ``keep`` (training aids such as teachers' scores)."""
    kept = [h for h in model.config.extra_heads if h in keep]
    if kept == model.config.extra_heads:
        return model
    slim = JSQA(replace(model.config, extra_heads=kept))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("heads.") or k.split(".")[1] in kept}
    slim.load_state_dict(state)
    slim.metadata, slim.name = dict(model.metadata), model.name
    return slim.train(model.training).to(next(model.parameters()).device)


# ---------------------------------------------------------------------------------------------- model folders


def save_model(model: JSQA, folder: str | Path, metadata: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (Hugging Face layout) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {**model.metadata, **(metadata or {})}
    config = {
        "model_type": MODEL_TYPE,
        "architectures": ["JSQA"],
        "jsqa_version": __version__,
        **asdict(model.config),
        "metadata": meta,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "model_type": MODEL_TYPE})
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    model.metadata = meta
    return folder


def read_config(folder: str | Path) -> tuple[JSQAConfig, dict]:
    """Parse a model folder's ``config.json`` → (config, metadata); ModelError if it is not a jsqa model."""
    raw = read_config_dict(folder)
    known = {f.name for f in fields(JSQAConfig)}
    return JSQAConfig(**{k: v for k, v in raw.items() if k in known}), raw.get("metadata", {})


def load_model(name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> JSQA:
    """Load a model by bundled name, folder or Hub id ``ORG/NAME[@REVISION]`` (None: ``$JSQA_MODEL``, else the
    bundled default), in eval mode on ``device``. ``model.name`` is the name scores report: the bundled name, the
    folder as given, or ``ORG/NAME@REVISION``. Never unpickles."""
    resolved = resolve(name_or_path)
    folder = resolved.path
    cfg, meta = read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelError(f"{folder}: {WEIGHTS_NAME} is missing")
    model = JSQA(cfg)
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ModelError(f"{weights}: unreadable safetensors file ({e})") from None
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}  # as copying into them would
    try:  # assign: the parameters become the tensors just read, instead of a second copy of the weights
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # shapes that differ from the config's
        raise ModelError(f"{weights}: weights do not match config.json ({_first_mismatch(str(e))})") from None
    missing = [k for k in missing if not k.startswith("encoder.frontend.")]  # fixed buffers, rebuilt from config
    if missing or unexpected:
        raise ModelError(
            f"{weights}: weights do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.metadata = meta
    model.name = resolved.name
    return model.to(device).eval()


def _first_mismatch(message: str) -> str:
    """The first 'size mismatch for ...' line of load_state_dict's error, without its leading tab."""
    lines = [line.strip() for line in message.splitlines() if "mismatch" in line]
    return lines[0].rstrip(".") if lines else message.splitlines()[0]
