"""Speech degradations for the recipe, all on 16 kHz mono float32 numpy signals.

One function per impairment, each a plain transform ``x -> y`` with physical parameters (dB, Hz, kbit/s, %),
shared by ``simulate_mos.py`` (the simulated MOS corpus), ``quality_checks.py`` (degradation ladders) and
``make_examples.py``. Codecs run in memory through libsndfile (soundfile): MP3, Ogg Vorbis, Ogg Opus,
GSM 06.10, G.711 mu-law / A-law; no ffmpeg. Filters and convolution come from scipy.
"""

from __future__ import annotations

import io
import math

import numpy as np
import soundfile as sf
from scipy import signal

from jsqa_cli.audio import SAMPLE_RATE, resample
from jsqa_cli.pairs import mix_at_snr

SR = SAMPLE_RATE
NOMINAL_LEVEL_DB = -26.0  # active speech level of "normal" loudness (ITU-T P.56 / P.800 practice: -26 dBov)


# ------------------------------------------------------------------------------------------------ levels


def active_level_db(x: np.ndarray, sr: int = SR, frame_s: float = 0.02, range_db: float = 40.0) -> float:
    """Active speech level (dBFS): mean power of the 20 ms frames within ``range_db`` of the loudest frame.

    A simple stand-in for ITU-T P.56 that ignores pauses, so that SNRs and levels refer to speech, not silence.
    """
    n = int(frame_s * sr)
    frames = x[: len(x) // n * n].reshape(-1, n) if len(x) >= n else x.reshape(1, -1)
    power = np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-20
    db = 10 * np.log10(power)
    active = power[db > max(db.max() - range_db, -100.0)]
    return float(10 * np.log10(np.mean(active)))


def trim_pauses(x: np.ndarray, sr: int = SR, frame_s: float = 0.02, range_db: float = 35.0) -> np.ndarray:
    """``x`` from its first to its last 20 ms frame within ``range_db`` of the loudest: no pause before or after,
    as prompts of voice services are often cut."""
    n = int(frame_s * sr)
    if len(x) < n:
        return x
    db = 10 * np.log10(np.mean(x[: len(x) // n * n].reshape(-1, n).astype(np.float64) ** 2, axis=1) + 1e-20)
    active = np.flatnonzero(db > db.max() - range_db)
    return x[active[0] * n : (active[-1] + 1) * n]


def set_level(x: np.ndarray, target_db: float) -> np.ndarray:
    """Scale ``x`` so that its active speech level is ``target_db`` dBFS (no clipping applied)."""
    return (x * 10 ** ((target_db - active_level_db(x)) / 20)).astype(np.float32)


def fit_length(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``n``-sample crop of ``x``, looping ``x`` first when it is shorter."""
    if len(x) < n:
        x = np.tile(x, int(math.ceil(n / len(x))) + 1)
    start = int(rng.integers(0, len(x) - n + 1))
    return x[start : start + n]


# ------------------------------------------------------------------------------------------------ noise


def mix_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that (active speech level) - (noise RMS level) = ``snr_db``; the speech keeps its
    level. The mixing is ``jsqa_cli.pairs.mix_at_snr`` (which counts the whole clip's speech power, pauses
    included): the SNR is shifted by the gap between the clip's RMS level and its active level. ``noise`` is cut
    to the speech's length; silent noise adds nothing."""
    noise = noise[: len(speech)]
    if not np.any(noise):
        return np.asarray(speech, dtype=np.float32)
    rms_db = 10 * math.log10(float(np.mean(np.asarray(speech, dtype=np.float64) ** 2)) + 1e-20)
    return mix_at_snr(speech, noise, snr_db + rms_db - active_level_db(speech), max_peak=math.inf)


def colored_noise(kind: str, n: int, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """Generated stationary noise: ``white``, ``pink`` (1/f), ``brown`` (1/f^2), ``hum`` (mains hum + hiss)."""
    if kind == "hum":
        t = np.arange(n) / sr
        f0 = rng.choice([50.0, 60.0])
        x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) for k in range(1, 8))
        return (x + 0.05 * rng.standard_normal(n)).astype(np.float32)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / sr), 20.0)
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[kind]
    x = np.fft.irfft(spec / f**exponent, n)
    return (x / (np.std(x) + 1e-12)).astype(np.float32)


def babble(utterances: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """Babble noise: the sum of several talkers (equal active levels), each looped and randomly cropped."""
    out = np.zeros(n, dtype=np.float32)
    for u in utterances:
        out += set_level(fit_length(u, n, rng), -30.0)
    return out


# ------------------------------------------------------------------------------------------------ noise suppression

SUPPRESSORS = ("subtraction", "wiener")
_STFT = dict(fs=SR, nperseg=512, noverlap=384)  # 32 ms Hann frames every 8 ms, as speech enhancers use


def suppression_mask(x: np.ndarray, kind: str, over: float, floor_db: float, noise_quantile: float = 0.1) -> np.ndarray:
    """The gain (frequencies × frames, within [10^(floor_db/20), 1]) that a single-channel noise suppressor sets on
    the noisy ``x``, from a noise estimate of its own: each frequency's ``noise_quantile`` power over the clip's
    frames (the floor its pauses leave), scaled to a mean. ``over`` (>= 1) scales the noise estimate: the larger,
    the more aggressive. ``subtraction``: power spectral subtraction, each bin and frame on its own, whose scattered
    gains leave musical noise; ``wiener``: the Wiener gain of the decision-directed a-priori SNR (Ephraim & Malah,
    smoothing 0.98), smoother in time, dulling weak speech instead. Apply it with :func:`apply_mask`."""
    if kind not in SUPPRESSORS:
        raise ValueError(f"unknown suppressor {kind!r}: choose one of {', '.join(SUPPRESSORS)}")
    power = np.abs(signal.stft(np.asarray(x, dtype=np.float64), **_STFT)[2]) ** 2
    # a noise bin's power is exponentially distributed: its q-quantile is -ln(1 - q) times its mean
    noise = over * np.quantile(power, noise_quantile, axis=1, keepdims=True) / -math.log1p(-noise_quantile) + 1e-12
    post = power / noise  # a-posteriori SNR against the scaled noise estimate
    if kind == "subtraction":
        gain = np.sqrt(np.maximum(1.0 - 1.0 / np.maximum(post, 1e-12), 0.0))
    else:
        gain = np.empty_like(post)
        g, gamma = np.ones(len(post)), np.ones(len(post))
        for t in range(post.shape[1]):
            prior = 0.98 * g**2 * gamma + 0.02 * np.maximum(post[:, t] - 1.0, 0.0)
            g, gamma = prior / (1.0 + prior), post[:, t]
            gain[:, t] = g
    return np.maximum(gain, 10 ** (floor_db / 20))


def apply_mask(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``x`` through a :func:`suppression_mask` (the same STFT), same length. The mask is linear: a mixture's
    output is the sum of its parts' outputs, so the speech alone through the noisy clip's mask is what of the
    speech the suppressor let through."""
    spec = signal.stft(np.asarray(x, dtype=np.float64), **_STFT)[2]
    y = signal.istft(spec * mask, **_STFT)[1][: len(x)]
    return np.pad(y, (0, len(x) - len(y))).astype(np.float32)


# ------------------------------------------------------------------------------------------------ distortions


def clip(x: np.ndarray, overdrive_db: float) -> np.ndarray:
    """Hard clipping: amplify so the peak sits ``overdrive_db`` above full scale, clip at ±1, restore the level."""
    level = active_level_db(x)
    peak = float(np.max(np.abs(x))) + 1e-12
    y = np.clip(x * (10 ** (overdrive_db / 20) / peak), -1.0, 1.0)
    return set_level(y, level)


def align(ref: np.ndarray, deg: np.ndarray, max_lag_s: float = 0.25, sr: int = SR) -> np.ndarray:
    """Undo a constant delay of ``deg`` against ``ref`` (cross-correlation peak) and cut/pad it to ``len(ref)``."""
    max_lag = int(max_lag_s * sr)
    n = min(len(ref), len(deg))
    corr = signal.correlate(deg[:n].astype(np.float64), ref[:n].astype(np.float64), mode="full", method="fft")
    lags = signal.correlation_lags(n, n, mode="full")
    keep = np.abs(lags) <= max_lag
    lag = int(lags[keep][np.argmax(np.abs(corr[keep]))])
    deg = deg[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, deg.dtype), deg])
    out = np.zeros(len(ref), dtype=np.float32)
    out[: min(len(ref), len(deg))] = deg[: len(ref)]
    return out


# name -> (soundfile format, subtype, codec sample rate)
CODECS = {
    "mp3": ("MP3", "MPEG_LAYER_III", 16000),
    "vorbis": ("OGG", "VORBIS", 16000),
    "opus": ("OGG", "OPUS", 16000),
    "gsm": ("WAV", "GSM610", 8000),
    "ulaw": ("WAV", "ULAW", 8000),
    "alaw": ("WAV", "ALAW", 8000),
}
# libsndfile has no bitrate setting: compression_level in [0, 1] picks it. Measured at 16 kHz mono (libsndfile
# 1.2.2): MP3 CBR 0.9 -> 24, 0.93 -> 16, 0.97 -> 8 kbit/s; Opus 0.9 -> 30, 0.95 -> 17, 0.97 -> 13, 0.99 -> 8.5
# kbit/s; Vorbis 0.6 -> 40, 1.0 -> 26 kbit/s.
MP3_LEVELS = {8: 0.97, 16: 0.93, 24: 0.9, 32: 0.85, 40: 0.8, 56: 0.7}


def codec(x: np.ndarray, name: str, level: float | None = None) -> np.ndarray:
    """Encode and decode ``x`` with a libsndfile codec, in memory. ``level``: libsndfile compression level
    (0 best quality .. 1 lowest bitrate; MP3 up to 0.97). 8 kHz codecs resample down and up (narrowband).
    The output is re-aligned to the input (codec delay removed by cross-correlation) and has its length."""
    fmt, subtype, rate = CODECS[name]
    y = resample(x, SR, rate) if rate != SR else x
    y = np.clip(y, -1.0, 1.0)
    buf = io.BytesIO()
    kwargs = {}
    if level is not None and name in ("mp3", "vorbis", "opus"):
        kwargs["compression_level"] = float(level)
    if name == "mp3":
        kwargs["bitrate_mode"] = "CONSTANT"
    sf.write(buf, y, rate, format=fmt, subtype=subtype, **kwargs)
    buf.seek(0)
    z, _ = sf.read(buf, dtype="float32")
    if rate != SR:
        z = resample(z, rate, SR)
    return align(x, z)


def band_limit(x: np.ndarray, kind: str, cutoff_hz: float | None = None) -> np.ndarray:
    """``lowpass`` / ``highpass`` at ``cutoff_hz`` (8th-order Butterworth, zero phase), or ``narrowband``:
    telephone band 300-3400 Hz through 8 kHz sampling."""
    if kind == "narrowband":
        y = resample(x, SR, 8000)
        sos = signal.butter(6, [300, 3400], btype="bandpass", fs=8000, output="sos")
        return resample(signal.sosfiltfilt(sos, y).astype(np.float32), 8000, SR)[: len(x)]
    sos = signal.butter(8, cutoff_hz, btype=kind, fs=SR, output="sos")
    return signal.sosfiltfilt(sos, x).astype(np.float32)


# ------------------------------------------------------------------------------------------------ voice and timbre
# Not impairments: variations of the *clean* reference, so that a speaker's pitch, formants and spectral tilt are
# not read as quality (a deep, dark voice is not a muffled one). The label is computed against the varied
# reference, so a varied clean clip is still clean.


def voice_shift(x: np.ndarray, factor: float) -> np.ndarray:
    """Speed perturbation: pitch and formants times ``factor`` (0.85 = deeper, 1.15 = higher), duration divided
    by it (resampling, as ASR speed perturbation)."""
    down = int(round(100 * factor))
    return signal.resample_poly(x.astype(np.float64), 100, down).astype(np.float32) if down != 100 else x


def spectral_tilt(
    x: np.ndarray, db_per_octave: float, pivot_hz: float = 1000.0, max_db: float = 9.0, sr: int = SR
) -> np.ndarray:
    """A smooth EQ: gain ``db_per_octave * log2(f / pivot)``, limited to +-``max_db`` (negative = darker)."""
    spec = np.fft.rfft(x.astype(np.float64))
    f = np.fft.rfftfreq(len(x), 1 / sr)
    gain_db = np.clip(db_per_octave * np.log2(np.maximum(f, 50.0) / pivot_hz), -max_db, max_db)
    return np.fft.irfft(spec * 10 ** (gain_db / 20), n=len(x)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ packet loss

PLC_MODES = ("zero", "remove", "fade", "repeat")


def loss_pattern(num_frames: int, rate: float, mean_burst: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean lost-frame mask from a two-state (Gilbert) model with loss ``rate`` and mean burst length
    ``mean_burst`` frames (1 = independent losses)."""
    q = 1.0 / max(mean_burst, 1.0)  # bad -> good
    p = min(1.0, rate * q / max(1e-9, 1 - rate))  # good -> bad, so that p / (p + q) = rate
    lost = np.zeros(num_frames, dtype=bool)
    state = rng.random() < rate
    for i in range(num_frames):
        lost[i] = state
        state = (rng.random() >= q) if state else (rng.random() < p)
    return lost


def packet_loss(
    x: np.ndarray, rate: float, mode: str, rng: np.random.Generator, frame_ms: float = 20.0, mean_burst: float = 1.0
) -> tuple[np.ndarray, float]:
    """Lose frames of ``frame_ms`` and conceal them as a receiver would; returns (signal, actual loss rate).

    ``zero``: the gap is silent. ``remove``: the frames are cut out (chopped speech, the signal gets shorter).
    ``fade``: the last good frame fades out over the gap. ``repeat``: the last good frame is repeated with
    3 dB attenuation per extra lost frame (G.711 Appendix I style). Frames join with 2 ms cross-fades.
    """
    n = int(frame_ms * SR / 1000)
    num = len(x) // n
    lost = loss_pattern(num, rate, mean_burst, rng)
    frames = x[: num * n].reshape(num, n).copy()
    tail = x[num * n :]
    ramp = np.linspace(1.0, 0.0, n, dtype=np.float32)
    last, run = np.zeros(n, np.float32), 0
    for i in range(num):
        if not lost[i]:
            last, run = frames[i].copy(), 0
            continue
        run += 1
        if mode == "zero":
            frames[i] = 0.0
        elif mode == "fade":
            frames[i] = last * ramp if run == 1 else 0.0
        elif mode == "repeat":
            frames[i] = last * 10 ** (-3 * (run - 1) / 20)
    if mode == "remove":
        frames = frames[~lost]
    y = np.concatenate([frames.reshape(-1), tail]).astype(np.float32)
    if mode != "remove":  # smooth the frame joins where the signal was replaced
        fade = int(0.002 * SR)
        for a in (np.flatnonzero(np.diff(lost.astype(np.int8)) != 0) + 1) * n:
            if 2 * fade <= a <= len(y) - 2 * fade:  # a 2 ms moving average across the join removes the click
                smooth = np.convolve(y[a - 2 * fade : a + 2 * fade], np.ones(fade) / fade, mode="same")
                y[a - fade : a + fade] = smooth[fade : 3 * fade]
    return y, float(lost.mean()) if num else 0.0


# ------------------------------------------------------------------------------------------------ rooms


def echo(x: np.ndarray, delay_ms: float, gain_db: float) -> np.ndarray:
    """A single echo: ``x`` plus a copy delayed by ``delay_ms`` at ``gain_db`` (negative dB), same length."""
    d = int(delay_ms * SR / 1000)
    y = x.copy()
    y[d:] += 10 ** (gain_db / 20) * x[: len(x) - d]
    return y


def synthetic_rir(rt60: float, rng: np.random.Generator, drr_db: float = 0.0, sr: int = SR) -> np.ndarray:
    """Exponentially decaying noise tail (decay set by ``rt60`` seconds) after a unit direct path; the tail
    energy sits ``drr_db`` below the direct path (direct-to-reverberant ratio)."""
    n = int(min(rt60 * 1.2, 2.0) * sr)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail[: int(0.002 * sr)] = 0.0  # first reflections arrive after ~2 ms
    tail *= 10 ** (-drr_db / 20) / (np.sqrt(np.sum(tail**2)) + 1e-12)
    tail[0] = 1.0
    return tail.astype(np.float32)


def reverb(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with a room impulse response; the direct path (RIR peak) stays aligned, the level is kept."""
    peak = int(np.argmax(np.abs(rir)))
    y = signal.fftconvolve(x, rir)[peak : peak + len(x)].astype(np.float32)
    return set_level(y, active_level_db(x))
