"""``hvae compress`` / ``hvae decompress``: a run's model over files of data, with the numbers printed.

The data coded are the data as the run's model reads them (:func:`hvae.data.load_like`: the run's scaling
and its fixed test-split binarisation), so a binarised run codes, and gives back, the binarised images.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_path
from . import compress, decompress, info

#: the input kinds whose decoded data are written back as they came: arrays to .npy, images to PNGs
_ARRAY_SUFFIXES = (".npy", ".npz")


def _load_run(run_dir: Path):
    """The run's config and model (:meth:`hvae.rundir.RunDir.load_model`: the final model, or the latest
    checkpoint's if training stopped early), on the CPU where the codec runs."""
    from ..rundir import RunDir

    run = RunDir(run_dir)
    cfg = run.read_config()
    model, _ = run.load_model("cpu")
    return cfg, model


def _read(run_dir: Path, cfg, model, path: Path | None, split: str | None) -> tuple[torch.Tensor, dict]:
    """The data to code (N, *data_shape) and what :func:`decompress_run` needs to write them back."""
    if split is not None:
        from ..data import load_dataset

        if path is not None:
            raise ValueError("give INPUT or --split, not both")
        return load_dataset(cfg.data).eval_tensor(split), {"kind": "split", "split": split}
    if path is None:
        raise ValueError("give INPUT (a .npy / .npz file, an image or a folder of images) or --split test")
    from ..data import load_like

    if model.config.embed_dim:  # a text run: text files (or a folder of them), read with the run's tokeniser
        from ..data.text import run_tokenizer

        tok = run_tokenizer(run_dir, cfg.data)
        x = load_like(cfg.data, path, tokenizer=tok, data_shape=tuple(model.config.data_shape))
        return x, {"kind": "text" if path.suffix.lower() not in _ARRAY_SUFFIXES else "array"}
    x = load_like(cfg.data, path, data_shape=tuple(model.config.data_shape))
    if path.suffix.lower() in _ARRAY_SUFFIXES:
        return x, {"kind": "array"}
    first = path if path.is_file() else next(p for p in sorted(path.rglob("*")) if p.is_file())
    from PIL import Image

    with Image.open(first) as im:
        mode = "RGB" if im.mode in ("RGB", "RGBA", "P") and x[0].numel() % 3 == 0 else "L"
        return x, {"kind": "images", "size": list(im.size), "mode": mode}


def _elbo_bits(model, x: torch.Tensor, batch_size: int = 256) -> float:
    """The model's mean -ELBO on ``x`` in bits per example (one posterior sample each, seed 0)."""
    torch.manual_seed(0)
    total = 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            total += float(-model(x[i : i + batch_size]).elbo.double().sum())
    return total / x.shape[0] / math.log(2)


def compress_run(
    run_dir: Path,
    path: Path | None,
    out: Path,
    *,
    split: str | None = None,
    overwrite: bool = False,
    latent_bits: int = 10,
    batch_size: int = 64,
    max_examples: int | None = None,
) -> dict:
    """Code a run's data into ``out``; returns the numbers ``hvae compress`` prints (bits per dimension
    total and net, the model's -ELBO on the same data, examples per second)."""
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a file name")
    cfg, model = _load_run(run_dir)
    x, source = _read(run_dir, cfg, model, path, split)
    if max_examples:
        x = x[:max_examples]
    t0 = time.perf_counter()
    data = compress(model, x, latent_bits=latent_bits, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    data = _with_source(data, source, run_dir)
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(data)
    h = info(data)
    n, dims = x.shape[0], math.prod(model.data_shape)
    r: dict = {"examples": n, "dims": dims, "bytes": len(data), "examples_per_s": n / seconds, "seconds": seconds}
    neg_elbo = _elbo_bits(model, x)  # bits per example
    if model.config.embed_dim:  # text: per unit of the tokeniser (byte, char or token) and nats per text
        from ..data.text import run_tokenizer, token_counts

        tok = run_tokenizer(run_dir, cfg.data)
        counts = token_counts(x, tok)
        unit = tok.unit if tok.unit in counts else "token"
        units = counts[unit]
        r.update(unit=unit, units=units)
        r.update(bits_per_unit=h["total_bits"] / units, net_bits_per_unit=h["net_bits"] / units)
        r.update(neg_elbo_bits_per_unit=neg_elbo * n / units)
        r.update(nats_per_text=h["total_bits"] * math.log(2) / n, net_nats_per_text=h["net_bits"] * math.log(2) / n)
        r.update(neg_elbo_nats_per_text=neg_elbo * math.log(2))
        return r
    r.update(bits_per_dim=h["total_bits"] / (n * dims), net_bits_per_dim=h["net_bits"] / (n * dims))
    r.update(neg_elbo_bits_per_dim=neg_elbo / dims)
    return r


def _with_source(data: bytes, source: dict, run_dir: Path) -> bytes:
    """The file with where its data came from and the run that coded it (a hint for decompress) in the header."""
    from . import container

    header, payload = container.unpack(data)
    header["source"] = source
    header["run"] = str(run_dir.resolve())
    return container.pack(header, payload)


def decompress_run(path: Path, out: Path, *, run_dir: Path | None = None, overwrite: bool = False) -> dict:
    """Decode ``path`` into ``out`` (a .npy file for arrays and splits, a folder of PNGs for images)."""
    from . import container

    data = Path(path).read_bytes()
    header, _ = container.unpack(data)
    run = Path(run_dir) if run_dir is not None else Path(header.get("run", ""))
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(
            f"the run that compressed {path} is not at {run}; pass --run RUN_DIR (the model is checked by its hash)"
        )
    source = header.get("source", {"kind": "array"})
    images = source["kind"] == "images"
    empty_folder = images and out.is_dir() and not any(out.iterdir())
    if out.exists() and not overwrite and not empty_folder:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if source["kind"] == "text":
        if out.suffix.lower() != ".txt":
            raise ValueError(f"--out {out}: these texts are written as a .txt file; give a path ending in .txt")
    elif not images and out.suffix.lower() != ".npy":
        raise ValueError(f"--out {out}: these data are written as a .npy file; give a path ending in .npy")
    cfg, model = _load_run(run)
    t0 = time.perf_counter()
    x = decompress(model, data)
    seconds = time.perf_counter() - t0
    result = {"examples": int(x.shape[0]), "examples_per_s": x.shape[0] / seconds, "seconds": seconds}
    if not x.dtype.is_floating_point:  # token ids: a text run
        if source["kind"] == "text":
            _write_texts(x, run, cfg, out)
        else:
            _write_npy(x.numpy(), out)
        return result
    levels = header["levels"]
    k = torch.round(x.double() * (levels - 1)).long().numpy()
    k = k.astype(np.uint8) if levels <= 256 else k
    if images:
        _write_pngs(k, levels, source, out)
    else:
        _write_npy(k, out)
    return result


def _write_npy(k: np.ndarray, out: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, k)
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


def _write_texts(x: torch.Tensor, run: Path, cfg, out: Path) -> None:
    """The texts of token rows (N, T), decoded by the run's tokeniser: one per line; where a text holds a
    newline (fortunes), each text then a line ``%`` (the fortune format, which the text sources read back)."""
    from ..data.text import run_tokenizer

    texts = run_tokenizer(run, cfg.data).decode_batch(x)
    end = "\n%\n" if any("\n" in t for t in texts) else "\n"
    body = "".join(t + end for t in texts)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(body, encoding="utf-8")


def _write_pngs(k: np.ndarray, levels: int, source: dict, out: Path) -> None:
    from PIL import Image

    w, h = source["size"]
    out.mkdir(parents=True, exist_ok=True)
    scale = 255 // (levels - 1) if levels <= 256 else 1
    for i, row in enumerate(k):
        if source["mode"] == "RGB":
            img = Image.fromarray((row.reshape(3, h, w).transpose(1, 2, 0) * scale).astype(np.uint8), "RGB")
        else:
            img = Image.fromarray((row.reshape(h, w) * scale).astype(np.uint8), "L")
            if levels == 2:
                img = img.convert("1")
        img.save(out / f"{i:05d}.png")
