"""Lossless compression of a run's test split: ``hvae compress`` / ``hvae decompress`` against standard codecs.

    python -m benchmarks.codec --run runs/fashion_bin [--run runs/fashion_8bit] [--max-examples N] [--scaling]

For each run, in one process and on the same images (the run's test split as the model reads it): the
commands a user runs (``hvae compress RUN --split test``, ``hvae decompress``), their printed rate (total
and net, bits/dim), the model's -ELBO beside it, and their speed; then PNG (1-bit and optimised for binary
images, grey otherwise), WebP lossless and JPEG-XL lossless (``imagecodecs``) on each image alone, and bz2
and lzma (at their highest settings) on the whole split as one stream (bits packed 8 to a byte for binary
data): a stream favours them. ``--scaling`` codes 200 images with untrained MLP models of 1, 2, 4 and 8
levels to show how the speed scales with depth. Results are printed as Markdown and written to
``benchmarks/results/codec.json``.
"""

from __future__ import annotations

import argparse
import bz2
import io
import json
import lzma
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _hvae(*args: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "hvae", *args], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"hvae {' '.join(args)} failed: {res.stderr}")
    return res.stdout, time.perf_counter() - t0


def _number(text: str, pattern: str) -> float:
    return float(re.search(pattern, text).group(1))


def _images(run: Path, n: int | None) -> tuple[np.ndarray, int]:
    """The test split as the model reads it: integer levels (N, H, W) or (N, C, H, W), and the levels."""
    from hvae.data import load_dataset
    from hvae.runconfig import RunConfig

    cfg = RunConfig.from_yaml(run / "config.yaml")
    x = load_dataset(cfg.data).eval_tensor("test")
    if n:
        x = x[:n]
    levels = 2 if cfg.model.likelihood == "bernoulli" else 2**cfg.model.num_bits
    k = torch.round(x.double() * (levels - 1)).to(torch.uint8).numpy()
    side = int(math.isqrt(k[0].size))
    if k.ndim == 2:  # flattened grey images
        k = k.reshape(len(k), side, side)
    elif k.shape[1] == 1:
        k = k[:, 0]
    return k, levels


def _baselines(k: np.ndarray, levels: int) -> dict[str, int]:
    """Bytes of each standard codec over all the images (each image alone, or the split as one stream)."""
    import imagecodecs
    from PIL import Image

    out = {"png": 0, "webp": 0, "jpegxl": 0}
    scale = 255 // (levels - 1)
    for img in k:
        grey = (img * scale).astype(np.uint8)
        buf = io.BytesIO()
        im = Image.fromarray(grey, "L")
        (im.convert("1") if levels == 2 else im).save(buf, format="PNG", optimize=True)
        out["png"] += len(buf.getvalue())
        rgb = np.repeat(grey[..., None], 3, -1)  # WebP codes colour only; three equal channels
        out["webp"] += len(imagecodecs.webp_encode(rgb, level=100, lossless=True, method=6))
        out["jpegxl"] += len(imagecodecs.jpegxl_encode(grey, lossless=True, effort=9))
    stream = np.packbits(k.reshape(-1)).tobytes() if levels == 2 else k.tobytes()
    out["bz2"] = len(bz2.compress(stream, 9))
    out["lzma"] = len(lzma.compress(stream, preset=9 | lzma.PRESET_EXTREME))
    return out


def bench_run(run: Path, n: int | None, latent_bits: int) -> dict:
    k, levels = _images(run, n)
    dims = k[0].size
    with tempfile.TemporaryDirectory() as tmp:
        f, back = Path(tmp) / "test.hvz", Path(tmp) / "test.npy"
        args = ["compress", str(run), "--split", "test", "--out", str(f), "--latent-bits", str(latent_bits)]
        if n:
            args += ["--max-examples", str(n)]
        printed, _ = _hvae(*args)
        _, dec_wall = _hvae("decompress", str(f), "--out", str(back))
        decoded = np.load(back).reshape(k.shape)
        assert np.array_equal(decoded, k), "the decoded split differs from the input"
        size = f.stat().st_size
    row = {
        "run": str(run),
        "examples": len(k),
        "dims": dims,
        "levels": levels,
        "latent_bits": latent_bits,
        "hvae_bytes": size,
        "total_bpd": _number(printed, r"rate\s+([\d.]+) bits/dim"),
        "net_bpd": _number(printed, r"([\d.]+) net"),
        "neg_elbo_bpd": _number(printed, r"-ELBO\s+([\d.]+)"),
        "encode_per_s": _number(printed, r"speed\s+([\d.]+) examples/s"),
        "decode_wall_s": dec_wall,
    }
    row["baseline_bpd"] = {name: 8 * b / (len(k) * dims) for name, b in _baselines(k, levels).items()}
    return row


def bench_scaling(levels_list=(1, 2, 4, 8), n: int = 200) -> list[dict]:
    import hvae
    from hvae import codec

    rows = []
    warm = hvae.build_model(hvae.presets.small()).eval()  # one-off start-up costs outside the timings
    codec.decompress(warm, codec.compress(warm, torch.zeros(4, 64)))
    for L in levels_list:
        torch.manual_seed(0)
        dims = [max(2, 32 >> i) for i in range(L)]
        cfg = hvae.presets.small(data_shape=[784], latent_dims=dims, hidden_dims=[128] * L)
        model = hvae.build_model(cfg).eval()
        x = torch.bernoulli(torch.full((n, 784), 0.3))
        t0 = time.perf_counter()
        data = codec.compress(model, x)
        t1 = time.perf_counter()
        y = codec.decompress(model, data)
        t2 = time.perf_counter()
        assert torch.equal(x, y)
        rows.append({"levels": L, "latent_dims": dims, "encode_per_s": n / (t1 - t0), "decode_per_s": n / (t2 - t1)})
    return rows


def markdown(rows: list[dict], scaling: list[dict]) -> str:
    lines = []
    for r in rows:
        lines.append(f"**{r['run']}** ({r['examples']} test images, {r['levels']} levels, {r['dims']} dims)\n")
        lines.append("| codec | bits/dim | vs hvae total |")
        lines.append("|---|---|---|")
        lines.append(f"| model -ELBO (one posterior sample) | {r['neg_elbo_bpd']:.4f} | |")
        lines.append(f"| **hvae compress, total** (whole file) | **{r['total_bpd']:.4f}** | 1.00 |")
        lines.append(f"| hvae compress, net (less initial bits) | {r['net_bpd']:.4f} | |")
        for name, bpd in sorted(r["baseline_bpd"].items(), key=lambda t: t[1]):
            lines.append(f"| {name} | {bpd:.4f} | {bpd / r['total_bpd']:.2f}x |")
        lines.append(
            f"\ntotal / -ELBO = {r['total_bpd'] / r['neg_elbo_bpd']:.4f}, net / -ELBO = "
            f"{r['net_bpd'] / r['neg_elbo_bpd']:.4f}; encode {r['encode_per_s']:.1f} images/s, decode "
            f"{r['examples'] / r['decode_wall_s']:.1f} images/s (the whole command, start-up included)\n"
        )
    if scaling:
        lines.append("| levels | encode images/s | decode images/s |")
        lines.append("|---|---|---|")
        for s in scaling:
            lines.append(f"| {s['levels']} | {s['encode_per_s']:.1f} | {s['decode_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, action="append", default=[], help="a trained run (repeatable)")
    p.add_argument("--max-examples", type=int, help="the first N test images only")
    p.add_argument("--latent-bits", type=int, default=10)
    p.add_argument("--scaling", action="store_true", help="speed against the number of levels")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/codec.json"))
    args = p.parse_args(argv)
    rows = [bench_run(run, args.max_examples, args.latent_bits) for run in args.run]
    scaling = bench_scaling() if args.scaling else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": rows, "scaling": scaling}, indent=1))
    print(markdown(rows, scaling))


if __name__ == "__main__":
    main()
