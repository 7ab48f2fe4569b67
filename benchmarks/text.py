"""Text benchmark (issue #32): do the latents of ``text_fortunes`` carry the sentence, and at what cost in bound,
against the yardstick of the same decoder with no latents, through the commands a user runs.

    python -m benchmarks.text                                   # every variant, seed 0, 15 minutes each
    python -m benchmarks.text --max-time 120 --variants preset all decoder_only --num-samples 10 --max-examples 200
    python -m benchmarks.text --seeds 0 1 2                     # the issue's protocol: 3 seeds x 15 CPU-minutes

Each variant is ``hvae train --config configs/text_fortunes.yaml <overrides> train.max_time=T train.seed=S``
(validation and checkpoints on a schedule of their own, the same for all, so they cost every run alike), then
``hvae eval RUN --num-samples K --max-examples N`` (the test split: IW bound, bits per byte, KL and active units
per level, the nats the latents tell the decoder and the reconstruction similarity). The yardstick,
``decoder_only``, is ``configs/text_fortunes_decoder_only.yaml``: the same Transformer decoder with no latents,
trained by the same trainer for the same time; its bound is its exact log-likelihood. The runs go one after the
other, so a machine whose load changes during the benchmark favours some runs: say so with the numbers.
Results go to ``benchmarks/results/text.json``; RESULTS.md is edited by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from benchmarks.commands import commit, hvae

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "configs" / "text_fortunes.yaml"
YARDSTICK = "decoder_only"


def variants(cycle_steps: int) -> dict[str, tuple[Path, list[str]]]:
    """Variant name -> (config, overrides): the preset, each remedy alone, all of them together, the yardstick.
    ``cycle_steps``: the length of a cyclical-annealing cycle (choose it from the steps a budget holds)."""
    word_dropout = ["model.seq_word_dropout=0.3"]
    context = ["model.seq_context=16"]
    cycles = [
        "model.kl_cycles=4",
        f"model.kl_cycle_steps={cycle_steps}",
        "train.kl_warmup_epochs=0",  # the cycles are the KL schedule
    ]
    seq_free_bits = ["model.free_bits_mode=sequence", "model.free_bits=10"]
    bn_vae = ["model.bn_posterior_means=0.6"]
    aggressive = ["train.aggressive_encoder=true", "train.aggressive_inner_steps=15", "train.aggressive_mi_every=10"]
    return {
        "preset": (PRESET, []),
        "word_dropout": (PRESET, word_dropout),
        "context": (PRESET, context),
        "kl_cycles": (PRESET, cycles),
        "seq_free_bits": (PRESET, seq_free_bits),
        "bn_vae": (PRESET, bn_vae),
        "aggressive": (PRESET, aggressive),
        "all": (PRESET, word_dropout + context + cycles + seq_free_bits + bn_vae + aggressive),
        YARDSTICK: (ROOT / "configs" / "text_fortunes_decoder_only.yaml", []),
    }


def row(name: str, seed: int, result: dict, yardstick: dict | None) -> dict:
    """The issue's numbers of one run (eval.json of ``hvae eval``), and its IW bound minus the yardstick's of
    the same seed (positive: the latent-variable model's bound is better)."""
    return {
        "variant": name,
        "seed": seed,
        "steps": result["step"],
        "iw_bound": result["iw_bound"],
        "iw_bound_stderr": result["iw_bound_stderr"],
        "bits_per_byte_iw": result.get("bits_per_byte_iw"),
        "kl": result["kl"],
        "latent_nats": result.get("latent_nats"),
        "active_units": result["active_units"],
        "units": result["units"],
        "reconstruction_similarity": result.get("reconstruction_similarity"),
        "vs_decoder_only": None if yardstick is None else result["iw_bound"] - yardstick["iw_bound"],
    }


def table(rows: list[dict]) -> str:
    """Markdown: one line per run, then the mean over seeds of every variant that has several."""
    head = (
        "| variant | seed | steps | IW bound (nats) | bits/byte (IW) | IW - decoder-only | KL per level | "
        "latents tell the decoder (nats) | active units | reconstruction similarity |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---|---:|---|---:|"]
    for r in rows:
        vs = "-" if r["vs_decoder_only"] is None or r["variant"] == YARDSTICK else f"{r['vs_decoder_only']:+.1f}"
        lines.append(
            f"| {r['variant']} | {r['seed']} | {r['steps']} | {r['iw_bound']:.1f} ± {r['iw_bound_stderr']:.1f} | "
            f"{r['bits_per_byte_iw']:.3f} | {vs} | {', '.join(f'{k:.2f}' for k in r['kl'])} | "
            f"{r['latent_nats']:.2f} | {', '.join(f'{a}/{u}' for a, u in zip(r['active_units'], r['units']))} | "
            f"{r['reconstruction_similarity']:.3f} |"
        )
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
    several = {v: rs for v, rs in by_variant.items() if len(rs) > 1}
    if several:
        lines += ["", "| variant | seeds | IW bound, mean ± sd | IW - decoder-only, mean ± se | latents tell, mean |"]
        lines.append("|---|---:|---:|---:|---:|")
        for v, rs in several.items():
            iw = [r["iw_bound"] for r in rs]
            d = [r["vs_decoder_only"] for r in rs if r["vs_decoder_only"] is not None]
            dtext = "-"
            if v != YARDSTICK and len(d) > 1:
                dtext = f"{statistics.mean(d):+.1f} ± {statistics.stdev(d) / math.sqrt(len(d)):.1f}"
            lines.append(
                f"| {v} | {len(rs)} | {statistics.mean(iw):.1f} ± {statistics.stdev(iw):.1f} | {dtext} | "
                f"{statistics.mean(r['latent_nats'] for r in rs):.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    every = list(variants(1))
    p.add_argument("--variants", nargs="+", default=every, choices=every, help="which to run (the yardstick always)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--max-time", default="15m", help="train.max_time of every run (e.g. 15m, 120)")
    p.add_argument("--cycle-steps", type=int, default=250, help="model.kl_cycle_steps of the kl_cycles variants")
    p.add_argument("--num-samples", type=int, default=100, help="K of the IW bound")
    p.add_argument("--max-examples", type=int, default=None, help="test examples scored (default: all)")
    p.add_argument("--runs", type=Path, default=Path("runs/text_bench"), help="folder for the run directories")
    p.add_argument("--examples", type=int, default=3, help="reconstructions printed per run (0: none)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "text.json")
    args = p.parse_args(argv)

    table_of = variants(args.cycle_steps)
    names = [YARDSTICK] + [v for v in args.variants if v != YARDSTICK]  # the yardstick first: every row needs it
    results: dict[str, dict] = {}
    timings: dict[str, dict] = {}
    examples: dict[str, str] = {}
    rows = []
    for seed in args.seeds:
        for name in names:
            config, overrides = table_of[name]
            run = args.runs / f"{name}-{seed}"
            t0 = time.perf_counter()
            hvae(
                "train", "--config", str(config), *overrides, f"train.max_time={args.max_time}",
                f"train.seed={seed}", "train.eval_every_s=600", "train.checkpoint_every_s=600",
                "--out", str(run), "--overwrite", "--quiet",
            )  # fmt: skip
            t1 = time.perf_counter()
            limit = ["--max-examples", str(args.max_examples)] if args.max_examples else []
            hvae("eval", str(run), "--num-samples", str(args.num_samples), *limit)
            timings[run.name] = {"train_s": round(t1 - t0, 1), "eval_s": round(time.perf_counter() - t1, 1)}
            result = json.loads((run / "eval.json").read_text())
            results[run.name] = result
            if args.examples:  # every level from q(z | x), decoded greedily: the reconstructions
                hvae(
                    "sample", str(run), "--from-data", "--n", str(args.examples), "--keep-top", "3",
                    "--decode", "greedy", "--overwrite",
                )  # fmt: skip
                examples[run.name] = (run / "samples" / "keep_top.txt").read_text()
            rows.append(row(name, seed, result, results.get(f"{YARDSTICK}-{seed}")))
    print(f"\ntest split, IW bound with K = {args.num_samples}; {args.max_time} of hvae train each\n")
    print(table(rows))
    record = {
        "commit": commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "max_time": args.max_time,
        "num_samples": args.num_samples,
        "timings_s": timings,
        "rows": rows,
        "reconstructions": examples,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
