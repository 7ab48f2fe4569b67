"""Audio: µ-law and log-mel with their inverses, resampling, the audio source, temporal hierarchies end to end."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

import hvae
from hvae.cli import main
from hvae.data import DataConfig, DataError, audio, load_dataset
from tests.browser import HAVE_CHROMIUM, dump_dom


def _tone(freq: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, 1)


@pytest.fixture
def tones(tmp_path):
    """Twenty short tone clips at 16 kHz (WAV and FLAC), different pitches and lengths."""
    folder = tmp_path / "tones"
    folder.mkdir()
    for i in range(20):
        ext = "flac" if i % 4 == 0 else "wav"
        sf.write(folder / f"{i:02d}.{ext}", _tone(200 + 40 * i, 16000, 0.3 + 0.02 * i), 16000)
    return folder


def test_mulaw_round_trip_is_within_the_quantisation_bound():
    x = torch.linspace(-1, 1, 20001)
    codes = audio.mulaw_encode(x)
    assert codes.dtype == torch.uint8 and int(codes.min()) == 0 and int(codes.max()) == 255
    x_hat = audio.mulaw_decode(codes)
    mu = audio.MU
    # |y - ŷ| <= 1/255 in the companded domain, so |x - x̂| <= (1 + mu|x|)((1 + mu)^(1/255) - 1) / mu
    bound = (1 + mu * x.abs()) * ((1 + mu) ** (1 / 255) - 1) / mu
    assert ((x - x_hat).abs() <= bound + 1e-6).all()
    torch.testing.assert_close(audio.mulaw_decode(codes.float() / 255), x_hat)  # levels k / 255 read the same


def test_resampling_a_sine_keeps_its_frequency():
    for rate_in, rate_out in ((22050, 8000), (8000, 16000)):
        y = audio.resample(_tone(440.0, rate_in, 1.0), rate_in, rate_out)
        assert abs(len(y) - rate_out) <= 1
        spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
        peak = np.argmax(spectrum) * rate_out / len(y)
        assert abs(peak - 440.0) <= 2.0


def test_logmel_and_its_griffin_lim_inverse():
    rate, n_fft, hop, n_mels = 8000, 256, 64, 32
    x = torch.from_numpy(_tone(500.0, rate, 0.5))
    frames = audio.logmel(x, rate, n_fft, hop, n_mels)
    assert frames.shape == (n_mels, 1 + len(x) // hop)
    y = audio.logmel_inverse(frames, rate, n_fft, hop, len(x))
    assert y.shape == x.shape and torch.isfinite(y).all()
    again = audio.logmel(y, rate, n_fft, hop, n_mels)
    # the strongest band survives the round trip
    assert again.mean(1).argmax() == frames.mean(1).argmax()


def test_audio_source_mulaw_and_logmel(tones, capsys):
    ds = load_dataset(DataConfig(source="audio", path=str(tones), sample_rate=8000, duration=0.5))
    err = capsys.readouterr().err
    assert "20 files resampled to 8000 Hz" in err and "zero-padded to 4000 samples" in err
    assert ds.shape == (1, 4000) and ds.levels == 256
    x = ds.eval_tensor("test")
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    mel = load_dataset(DataConfig(source="audio", path=str(tones), audio_features="logmel", duration=0.5))
    assert mel.shape == (32, 1 + 4000 // 128)


def test_bad_audio_gets_a_clear_error_or_a_counted_fallback(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    sf.write(folder / "stereo.wav", _tone(300, 8000, 0.2, channels=2), 8000)
    sf.write(folder / "mono.wav", _tone(300, 8000, 0.2), 8000)
    sf.write(folder / "fast.wav", _tone(300, 16000, 0.2), 16000)
    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file")
    cfg = dict(source="audio", path=str(folder), sample_rate=8000, duration=0.25, val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(DataError, match="broken.wav is not a readable audio file"):
        load_dataset(DataConfig(**cfg))
    ds = load_dataset(DataConfig(**cfg, audio_errors="skip"))
    err = capsys.readouterr().err
    assert len(ds.train) == 3
    assert "1 files unreadable, skipped" in err and "1 files with several channels mixed to mono" in err
    assert "1 files resampled to 8000 Hz" in err
    with pytest.raises(DataError, match="stereo.wav has 2 channels"):
        load_dataset(DataConfig(**cfg, audio_errors="skip", multichannel="error"))
    with pytest.raises(DataError, match="fast.wav is sampled at 16000 Hz.*resample: true"):
        load_dataset(DataConfig(**cfg, audio_errors="skip", resample=False))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .wav, .flac or .ogg"):
        load_dataset(DataConfig(source="audio", path=str(tmp_path / "empty"), duration=0.1))


def test_temporal_hierarchy_has_latents_at_several_time_resolutions():
    torch.manual_seed(0)
    cfg = hvae.presets.audio_digits(
        data_shape=[8, 30], latent_dims=[4, 4, 4], hidden_dims=[16, 16, 16], strides=[2, 2, 4]
    )
    model = hvae.build_model(cfg)
    assert [layer.latent_shape for layer in model.layers] == [(4, 16), (4, 8), (4, 2)]  # 30 padded to 32
    x = torch.randn(4, 8, 30)
    out = model(x)
    assert out.elbo.shape == (4,) and torch.isfinite(out.loss)
    model.eval()
    assert model.sample(2).shape == (2, 8, 30)
    iw = model.log_likelihood(x, num_samples=16)
    with torch.no_grad():
        elbo = torch.stack([model(x).elbo for _ in range(16)]).mean(0)
    assert (iw >= elbo - 0.5).all()


def test_mulaw_waveform_model_trains_a_step(tones):
    torch.manual_seed(0)
    ds = load_dataset(DataConfig(source="audio", path=str(tones), sample_rate=4000, duration=0.25))
    cfg = hvae.presets.audio_digits(
        data_shape=list(ds.shape), likelihood="categorical", num_classes=256, latent_dims=[4, 4], hidden_dims=[16, 16],
        strides=[4, 4],
    )  # fmt: skip
    model = hvae.build_model(cfg)
    opt = hvae.make_optimizer(model, lr=1e-3)
    x = next(ds.batches("train", 8))
    losses = []
    for _ in range(3):
        loss = model(x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0]
    wave = audio.to_waveform(model.eval().sample(1), ds.config)
    assert wave.shape == (1, 1000) and wave.abs().max() <= 1


def test_audio_preset_trains_samples_wavs_and_reports_players(tones, tmp_path):
    run = tmp_path / "run"
    args = [
        "train", "--config", "configs/audio_digits.yaml", f"data.path={tones}", "data.duration=0.5",
        "train.epochs=1", "train.batch_size=8", "train.max_steps=2", "--out", str(run), "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    assert main(["eval", str(run), "--num-samples", "4"]) == 0
    assert main(["sample", str(run), "--n", "2"]) == 0
    wav = run / "samples" / "samples_000.wav"
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels, info.frames) == (8000, 1, 4000)
    assert (run / "samples" / "samples_spectrograms.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["sample", str(run), "--n", "2", "--from-data", "--keep-top", "3"]) == 0
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert page.count('<audio controls preload="none" src="data:audio/wav;base64,') >= 8
    assert "Griffin-Lim" in page
    if HAVE_CHROMIUM:  # the page renders with its players and spectrogram images
        dom = dump_dom(run / "report.html", tmp_path / "profile")
        assert dom.count("<audio") == page.count("<audio") and "<img" in dom


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_spoken_digits_command(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["data", "spoken-digits", "--out", str(out), "--per-digit", "1"]) == 0
    files = sorted(out.glob("*.wav"))
    assert [f.name for f in files] == [f"{d}_000.wav" for d in range(10)]
    assert all(sf.info(str(f)).frames > 1000 for f in files)
    ds = load_dataset(DataConfig(source="audio", path=str(out), audio_features="logmel", val_fraction=0.2,
                                 test_fraction=0.2))  # fmt: skip
    assert ds.shape == (32, 63)


def test_spoken_digits_without_espeak_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    assert main(["data", "spoken-digits", "--out", str(tmp_path / "d")]) == 2
    assert "espeak-ng is not installed" in capsys.readouterr().err
