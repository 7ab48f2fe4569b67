"""Audio data: reading, resampling, the two representations and their inverses, and spoken digits.

* Files: WAV / FLAC / OGG read with ``soundfile``; several channels mixed to mono (or refused); resampled to
  the configured rate with ``scipy.signal.resample_poly`` (polyphase, anti-aliased); cropped or zero-padded
  to a fixed length.
* ``mulaw``: 8-bit µ-law codes (1, T) stored as uint8 (values k / 255 in [0, 1]; a categorical likelihood
  over 256 classes). Inverse: µ-law expansion, exact up to the quantisation step.
* ``logmel``: log-mel spectrogram frames (n_mels, frames), scaled as ``(ln(mel + 1e-5) + 5) / 5`` (roughly
  [-1.3, 2]; a Gaussian likelihood). Inverse: mel pseudo-inverse, then Griffin-Lim phase reconstruction.
* ``synthesize_spoken_digits``: the ten digits spoken by Debian's ``espeak-ng`` with varied voices, pitch and
  speed (``hvae data spoken-digits``).
"""

from __future__ import annotations

import io
import math
import random
import shutil
import subprocess
import sys
from math import gcd
from pathlib import Path

import numpy as np
import torch

from .sources import SOURCES, DataError, RawData, Source

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MU = 255
LOG_FLOOR = 1e-5
_LOG_SHIFT, _LOG_SCALE = 5.0, 5.0
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# ---------------------------------------------------------------------------------------------------- signals


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples (channels, N) float32 in [-1, 1] and the file's sample rate; DataError if unreadable."""
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        raise DataError(f"{path} is not a readable audio file ({e})") from None
    return np.ascontiguousarray(data.T), int(rate)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling along the last axis (scipy.signal.resample_poly: FIR anti-aliasing filter)."""
    if rate_in == rate_out:
        return x
    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(x, rate_out // g, rate_in // g, axis=-1).astype(np.float32)


def fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """Crop to the first ``length`` samples, or pad with zeros at the end; last axis."""
    if x.shape[-1] >= length:
        return x[..., :length]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])])


def mulaw_encode(x: np.ndarray | torch.Tensor, mu: int = MU):
    """Samples in [-1, 1] -> codes 0..mu: y = sign(x) ln(1 + mu|x|) / ln(1 + mu), quantised to mu + 1 levels."""
    t = torch.as_tensor(x, dtype=torch.float32).clamp(-1, 1)
    y = torch.sign(t) * torch.log1p(mu * t.abs()) / math.log1p(mu)
    return torch.round((y + 1) / 2 * mu).to(torch.uint8 if mu <= 255 else torch.long)


def mulaw_decode(codes: torch.Tensor, mu: int = MU) -> torch.Tensor:
    """Codes 0..mu (or levels k / mu in [0, 1] when floating) -> samples in [-1, 1] (µ-law expansion)."""
    k = codes * mu if codes.dtype.is_floating_point else codes.to(torch.float32)
    y = 2 * k / mu - 1
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(mu)) / mu


def mel_filterbank(rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters equally spaced on the HTK mel scale, 0 Hz to rate / 2."""

    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    edges = hz(np.linspace(mel(0.0), mel(rate / 2), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return torch.tensor(fb, dtype=torch.float32)


def _window(n_fft: int) -> torch.Tensor:
    return torch.hann_window(n_fft)


def logmel(x: torch.Tensor, rate: int, n_fft: int, hop: int, n_mels: int) -> torch.Tensor:
    """Waveform (..., T) -> scaled log-mel frames (..., n_mels, 1 + T // hop)."""
    spec = torch.stft(x, n_fft, hop, window=_window(n_fft), center=True, return_complex=True).abs() ** 2
    mel = mel_filterbank(rate, n_fft, n_mels) @ spec
    return (torch.log(mel + LOG_FLOOR) + _LOG_SHIFT) / _LOG_SCALE


def griffin_lim(magnitude: torch.Tensor, n_fft: int, hop: int, length: int, iters: int = 32) -> torch.Tensor:
    """Waveform (..., length) whose STFT magnitude approaches ``magnitude`` (..., n_fft // 2 + 1, frames):
    alternate projections (Griffin & Lim 1984) with a fixed-seed random start phase."""
    gen = torch.Generator().manual_seed(0)
    phase = torch.exp(2j * math.pi * torch.rand(magnitude.shape, generator=gen))
    w = _window(n_fft)
    x = torch.istft(magnitude * phase, n_fft, hop, window=w, length=length)
    for _ in range(iters):
        s = torch.stft(x, n_fft, hop, window=w, center=True, return_complex=True)
        x = torch.istft(magnitude * torch.exp(1j * s.angle()), n_fft, hop, window=w, length=length)
    return x


def logmel_inverse(frames: torch.Tensor, rate: int, n_fft: int, hop: int, length: int, iters: int = 32):
    """Scaled log-mel frames (..., n_mels, F) -> waveform (..., length): the mel filters' pseudo-inverse gives
    the power spectrum (clamped at 0), Griffin-Lim the phase."""
    mel = (torch.exp(frames.float() * _LOG_SCALE - _LOG_SHIFT) - LOG_FLOOR).clamp_min(0)
    fb = mel_filterbank(rate, n_fft, frames.shape[-2])
    power = (torch.linalg.pinv(fb) @ mel).clamp_min(0)
    return griffin_lim(power.sqrt(), n_fft, hop, length, iters).clamp(-1, 1)


def to_waveform(x: torch.Tensor, data_config) -> torch.Tensor:
    """A batch of examples in the representation of ``data_config`` (B, 1, T) or (B, n_mels, F) -> (B, T)."""
    c = data_config
    length = num_samples(c)
    if c.audio_features == "mulaw":
        return mulaw_decode(x.float().reshape(x.shape[0], -1) if x.dtype.is_floating_point else x.reshape(len(x), -1))
    return logmel_inverse(x.cpu(), c.sample_rate, c.n_fft, c.hop_length, length)


def wav_bytes(wave: torch.Tensor | np.ndarray, rate: int) -> bytes:
    """A mono 16-bit PCM WAV file in memory."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(wave, dtype=np.float32).reshape(-1), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def spectrogram_png(frames: list[np.ndarray], titles: list[str] | None = None) -> bytes:
    """PNG of log-spectrogram panels side by side (each (bands, frames), low bands at the bottom)."""
    from matplotlib.figure import Figure

    n = len(frames)
    cols = min(n, 8)
    rows = -(-n // cols)
    fig = Figure(figsize=(1.8 * cols, 1.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < n:
            ax.imshow(frames[i], origin="lower", aspect="auto", cmap="magma")
            if titles:
                ax.set_title(titles[i], fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return buf.getvalue()


def spectrogram_frames(x: torch.Tensor, data_config) -> list[np.ndarray]:
    """Panels for :func:`spectrogram_png`: log-mel frames as they are, µ-law examples via their waveform."""
    c = data_config
    if c.audio_features == "logmel":
        return [f.float().cpu().numpy() for f in x]
    wave = to_waveform(x.cpu(), c)
    return [f.numpy() for f in logmel(wave, c.sample_rate, c.n_fft, c.hop_length, c.n_mels)]


# ---------------------------------------------------------------------------------------------------- the source


def num_samples(config) -> int:
    return int(round(config.sample_rate * config.duration))


def example_shape(config) -> tuple[int, int]:
    if config.audio_features == "mulaw":
        return (1, num_samples(config))
    return (config.n_mels, 1 + num_samples(config) // config.hop_length)


def audio_files(path: Path) -> list[Path]:
    if not path.is_dir():
        raise DataError(f"data.path {path} is not a folder; source audio reads a folder of WAV / FLAC / OGG files")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{path} holds no .wav, .flac or .ogg files")
    return files


def read_audio_folder(config) -> RawData:
    """Every audio file under ``config.path`` as one example in ``config.audio_features``; see the module doc."""
    if config.path is None:
        raise DataError("source audio needs data.path: a folder of WAV / FLAC / OGG files")
    length = num_samples(config)
    counts = {"unreadable": 0, "mixed": 0, "resampled": 0, "cropped": 0, "padded": 0}
    waves = []
    for f in audio_files(Path(config.path).expanduser()):
        try:
            x, rate = read_audio(f)
            if x.shape[1] == 0:
                raise DataError(f"{f} holds no samples")
        except DataError:
            if config.audio_errors == "error":
                raise
            counts["unreadable"] += 1
            continue
        if x.shape[0] > 1:
            if config.multichannel == "error":
                raise DataError(f"{f} has {x.shape[0]} channels; set data.multichannel: mix to average them to mono")
            counts["mixed"] += 1
        x = x.mean(0)
        if rate != config.sample_rate:
            if not config.resample:
                raise DataError(
                    f"{f} is sampled at {rate} Hz, not data.sample_rate {config.sample_rate}; set data.resample: true"
                )
            counts["resampled"] += 1
            x = resample(x, rate, config.sample_rate)
        if len(x) > length:
            counts["cropped"] += 1
        elif len(x) < length:
            counts["padded"] += 1
        waves.append(fit_length(x, length))
    what = {
        "unreadable": "unreadable, skipped",
        "mixed": "with several channels mixed to mono",
        "resampled": f"resampled to {config.sample_rate} Hz",
        "cropped": f"cropped to {length} samples",
        "padded": f"zero-padded to {length} samples",
    }
    notes = [f"{v} files {what[k]}" for k, v in counts.items() if v]
    for n in notes:
        print(f"hvae data: source audio ({config.path}): {n}", file=sys.stderr)
    if not waves:
        raise DataError(f"{config.path}: no readable audio files")
    wave = torch.from_numpy(np.stack(waves))  # (N, T)
    if config.audio_features == "mulaw":
        return RawData(x=mulaw_encode(wave).unsqueeze(1), levels=256, scale=float(MU))
    frames = torch.cat(
        [logmel(w, config.sample_rate, config.n_fft, config.hop_length, config.n_mels) for w in wave.split(256)]
    )
    return RawData(x=frames.contiguous(), levels=None)


@SOURCES.register("audio")
class Audio(Source):
    modality = "audio"
    path_hint = "folder of WAV / FLAC / OGG files"
    split_suffixes = ("",)

    def read(self, config, train_rows) -> RawData:
        return read_audio_folder(config)


# ---------------------------------------------------------------------------------------------------- spoken digits

VOICES = ("en", "en-us", "en+f2", "en+f3", "en+f4", "en+m1", "en+m3", "en+m7", "en-us+f2", "en-us+m3")


def synthesize_spoken_digits(out: str | Path, per_digit: int = 20, seed: int = 0) -> list[Path]:
    """Write ``per_digit`` recordings of each digit 0-9 to ``out`` as ``{digit}_{i:03d}.wav`` (16-bit mono,
    22,050 Hz) with espeak-ng, each with a voice, speed (140-220 words/min) and pitch (20-80) drawn from a
    generator seeded with ``seed``. Raises DataError when espeak-ng is not installed."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DataError("espeak-ng is not installed; install it (apt-get install espeak-ng) to synthesise speech")
    if per_digit < 1:
        raise ValueError(f"--per-digit must be >= 1, got {per_digit}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for d, word in enumerate(DIGITS):
        for i in range(per_digit):
            path = out / f"{d}_{i:03d}.wav"
            voice, speed, pitch = rng.choice(VOICES), rng.randint(140, 220), rng.randint(20, 80)
            cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), word]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0 or not path.is_file():
                raise DataError(f"espeak-ng failed for {word!r} with voice {voice}: {done.stderr.strip()}")
            paths.append(path)
    return paths
