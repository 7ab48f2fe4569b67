"""Samples written as files, by modality: image grids (PNG), text (a .txt of decoded rows), audio (a folder of
WAV files and a spectrogram PNG).

The modality comes from the run's data source (:func:`hvae.data.sources.modality`); tables are written as
images when their examples reshape to pictures (flattened images) and refused otherwise. To add a modality,
add it to :data:`hvae.data.sources.MODALITIES` and set it on its sources, then add its writer to ``WRITERS``
(``writer(x, name, ncol, out, run_dir, data_config, data_shape) -> message``) and its output's suffix to
``SUFFIXES`` (None: a folder).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from hvae.report.images import save_grid, to_images


def _write_image(x: torch.Tensor, name: str, ncol: int | None, out: Path, run_dir, dc, data_shape) -> str:
    pics = to_images(x, data_shape)
    if pics is None:
        raise ValueError("these data are not images; samples can be read with the Python API (model.sample)")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(pics, out, nrow=ncol or max(1, int(round(len(x) ** 0.5))))
    return f"wrote {out}"


def _write_text(x: torch.Tensor, name: str, ncol: int | None, out: Path, run_dir, dc, data_shape) -> str:
    from hvae.data.text import run_tokenizer

    texts = run_tokenizer(run_dir, dc).decode_batch(x)
    lines = []
    if ncol:  # rows of ncol: keep-top rows (inputs first) or one interpolation per row
        for r in range(0, len(texts), ncol):
            lines.append(f"--- row {r // ncol + 1}")
            lines.extend(repr(t)[1:-1] for t in texts[r : r + ncol])
    else:
        lines.extend(repr(t)[1:-1] for t in texts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return "\n".join(lines) + f"\nwrote {out}"


def _write_audio(x: torch.Tensor, name: str, ncol: int | None, out: Path, run_dir, dc, data_shape) -> str:
    from hvae.data import audio

    out.mkdir(parents=True, exist_ok=True)
    for i, wave in enumerate(audio.to_waveform(x, dc)):
        (out / f"{name}_{i:03d}.wav").write_bytes(audio.wav_bytes(wave.numpy(), dc.sample_rate))
    png = out / f"{name}_spectrograms.png"
    png.write_bytes(audio.spectrogram_png(audio.spectrogram_frames(x, dc)))
    return f"wrote {len(x)} WAV files ({dc.sample_rate} Hz) and {png} to {out}"


Writer = Callable[..., str]
# a table's rows may be flattened images (to_images reshapes them); _write_image refuses any other table
WRITERS: dict[str, Writer] = {"image": _write_image, "table": _write_image, "text": _write_text, "audio": _write_audio}
SUFFIXES: dict[str, str | None] = {"image": ".png", "table": ".png", "text": ".txt", "audio": None}


def sample_path(kind: str, name: str, out: Path | None, run_dir: Path) -> Path:
    """Where samples named ``name`` go: ``out``, or ``RUN_DIR/samples/<name><suffix>`` (audio: the folder)."""
    from hvae.rundir import RunDir

    if out is not None:
        return out
    suffix = SUFFIXES[kind]
    samples = RunDir(run_dir).samples_dir
    return samples / f"{name}{suffix}" if suffix else samples


def check_out(kind: str, out: Path | None, name: str, count: int, overwrite: bool) -> None:
    """``--out`` for samples, before any sampling work: a file with this modality's suffix (so a user's
    other files are never overwritten with samples) that does not exist unless ``overwrite``; for audio a
    folder whose sample files do not exist unless ``overwrite``."""
    if out is None:
        return
    suffix = SUFFIXES[kind]
    if suffix is None:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out}: audio samples go into a folder, and {out} is a file; name a folder")
        taken = [out / f"{name}_{i:03d}.wav" for i in range(count)] + [out / f"{name}_spectrograms.png"]
        taken = [p for p in taken if p.exists()]
        if taken and not overwrite:
            raise ValueError(
                f"--out {out} already holds {taken[0].name} (and {len(taken) - 1} more of the files it would "
                "write); pass --overwrite to replace them, or choose another folder"
            )
        return
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name ending in {suffix}")
    if out.suffix.lower() != suffix:
        raise ValueError(f"--out {out}: this run's samples are written as {suffix}; give a path ending in {suffix}")
    if out.exists() and not overwrite:
        raise ValueError(f"--out {out} already exists; pass --overwrite to replace it, or choose another name")


def write_samples(kind: str, x: torch.Tensor, name: str, ncol: int | None, out: Path, run_dir, dc, data_shape) -> str:
    """Write samples ``x`` (N, *data_shape) on the CPU as the modality's files; returns what to print."""
    return WRITERS[kind](x, name, ncol, out, run_dir, dc, data_shape)
