"""Equal-budget evidence for issue #27: the small NVAE and VDVAE on Fashion-MNIST as they were ("before": the
options' old values given as overrides) and as the official code builds and trains them ("after": the configs
as shipped), each trained for the same wall-clock budget and scored on the same test images with the same K,
all from one commit, through the commands a user runs.

    python -m benchmarks.fidelity_budget                                  # 15 CPU-minutes per run, seed 0
    python -m benchmarks.fidelity_budget --budget 60 --max-examples 200 --num-samples 10   # a quick look
    python -m benchmarks.fidelity_budget --seeds 0 1 2 --only nvae        # one model, three seeds

Each run is ``hvae train --config CONFIG <overrides> train.max_time=S train.seed=N`` (the configs' step and
epoch limits lifted, so the budget ends every run; validation and
checkpoints on a schedule of their own, the same for all), then ``hvae eval RUN --num-samples K
--max-examples N`` on the test split (the first N test images, the same for every run). The runs go one after
the other, so a machine whose load changes during the benchmark favours some runs: say so with the numbers.
Results go to ``benchmarks/results/fidelity_budget.json``; RESULTS.md is edited by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.commands import commit, hvae, write_record

ROOT = Path(__file__).resolve().parent.parent
NVAE = ROOT / "configs" / "nvae_fashion_small.yaml"
VDVAE = ROOT / "configs" / "vdvae_fashion_small.yaml"

# the training settings both small configs had before (configs/nvae_fashion_small.yaml: Adamax at 5e-3, clipping
# at 200 per example, KL warm-up over half an epoch; the VDVAE's as configs/vdvae_colour_small.yaml's: Adamax at
# 2e-3, clipping at 200 per example, no warm-up), with every setting the new configs add put back to its default
_OLD_TRAIN = [
    "train.optimizer=adamax",
    "train.adam_eps=null",
    "train.adam_beta2=null",
    "train.weight_decay=0.0",
    "train.lr_warmup_steps=0",
    "train.lr_decay=none",
    "train.lr_min=0.0",
    "train.grad_clip=200.0",
    "train.grad_norm_per=example",
    "train.skip_threshold=null",
    "train.kl_warmup_fraction=null",
    "train.kl_const_fraction=0.0",
]
_NVAE_OPTIONS = ("leading_bn", "weight_norm", "residual_resampling", "official_heads", "learned_top")
_NVAE_OPTIONS += ("symmetric_input", "one_combiner")
_VDVAE_OPTIONS = ("posterior_block", "prior_block", "identity_state", "bias_maps", "upsample_last", "output_gain")
# the models' options as they were: hvae.presets.NVAE_SMALL_BEFORE and VDVAE_SMALL_BEFORE, as command-line overrides
NVAE_BEFORE = [
    "model.state_activation=activation",
    "model.scale_param=std",
    "model.spectral.reg=0.01",
    "model.spectral.reg_init=1.0",
    "model.spectral.reg_warmup_steps=500",
    "model.spectral.iterations=1",
    "model.spectral.seed_iterations=20",
    "model.spectral.over=all",
    "model.bn_scale_penalty=false",
    "model.kl_warmup_floor=0.0",
    *(f"model.nvae.{k}=false" for k in _NVAE_OPTIONS),
    "model.nvae.pre_cells=0",
    "model.nvae.post_cells=0",
    *_OLD_TRAIN,
    "train.lr=0.005",
    "train.kl_warmup_epochs=0.5",
    "train.compile=auto",  # the config had no compile setting (the default); it now runs eagerly (its comment)
]
VDVAE_BEFORE = [
    "model.state_activation=activation",
    "model.scale_param=std",
    "model.official_init=false",
    *(f"model.vdvae.{k}=false" for k in _VDVAE_OPTIONS),
    "model.vdvae.encoder_depths=null",
    "model.vdvae.pointwise_at=0",
    *_OLD_TRAIN,
    "train.lr=0.002",
]


def variants() -> dict[str, tuple[Path, list[str]]]:
    """Variant name -> (config, overrides): each model before and after."""
    return {
        "nvae_before": (NVAE, NVAE_BEFORE),
        "nvae_after": (NVAE, []),
        "vdvae_before": (VDVAE, VDVAE_BEFORE),
        "vdvae_after": (VDVAE, []),
    }


def row(name: str, seed: int, result: dict, train_s: float) -> dict:
    """The numbers of one run (eval.json of ``hvae eval``) and its training pace."""
    return {
        "variant": name,
        "seed": seed,
        "steps": result["step"],
        "steps_per_s": round(result["step"] / train_s, 2) if train_s > 0 else None,
        "iw_bound": result["iw_bound"],
        "iw_bound_stderr": result["iw_bound_stderr"],
        "elbo": result["elbo"],
        "kl": sum(result["kl"]),
        "active_units": sum(result["active_units"]),
        "units": sum(result["units"]),
    }


def table(rows: list[dict]) -> str:
    """Markdown: one line per run, then for each model and seed the bound after minus before (positive: better)."""
    lines = [
        "| variant | seed | steps | steps/s (incl. start-up) | IW bound (nats) | ELBO | KL | active units |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['seed']} | {r['steps']} | {r['steps_per_s']} | {r['iw_bound']:.2f} ± "
            f"{r['iw_bound_stderr']:.2f} | {r['elbo']:.2f} | {r['kl']:.2f} | {r['active_units']}/{r['units']} |"
        )
    by = {(r["variant"], r["seed"]): r for r in rows}
    gains = []
    for (name, seed), r in by.items():
        model, side = name.rsplit("_", 1)
        before = by.get((f"{model}_before", seed))
        if side == "after" and before is not None:
            gains.append(f"| {model} | {seed} | {r['iw_bound'] - before['iw_bound']:+.2f} |")
    if gains:
        lines += ["", "| model | seed | IW bound after - before (nats) |", "|---|---:|---:|", *gains]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    every = list(variants())
    p.add_argument("--budget", default="15m", help="train.max_time of every run (e.g. 15m, 60)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--num-samples", type=int, default=1000, help="K of the IW bound")
    p.add_argument("--max-examples", type=int, default=1000, help="test images scored (the first N)")
    p.add_argument(
        "--only", nargs="+", default=every, choices=[*every, "nvae", "vdvae"], help="variants, or a model's two"
    )
    p.add_argument("--data-path", default=None, help="data.path of every run (default: the configs')")
    p.add_argument("--runs", type=Path, default=Path("runs/fidelity_budget"), help="folder for the run directories")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fidelity_budget.json")
    args = p.parse_args(argv)

    names = [v for v in every if v in args.only or v.rsplit("_", 1)[0] in args.only]
    data = [f"data.path={args.data_path}"] if args.data_path else []
    rows, results, timings = [], {}, {}
    for seed in args.seeds:
        for name in names:
            config, overrides = variants()[name]
            run = args.runs / f"{name}-{seed}"
            t0 = time.perf_counter()
            hvae(
                "train", "--config", str(config), *overrides, *data, f"train.max_time={args.budget}",
                f"train.seed={seed}", "train.eval_every_s=600", "train.checkpoint_every_s=600",
                "train.max_steps=null", "train.epochs=1000",  # the budget, not the configs' 800 steps, ends each run
                "--out", str(run), "--overwrite", "--quiet",
            )  # fmt: skip
            t1 = time.perf_counter()
            hvae("eval", str(run), "--num-samples", str(args.num_samples), "--max-examples", str(args.max_examples))
            timings[run.name] = {"train_s": round(t1 - t0, 1), "eval_s": round(time.perf_counter() - t1, 1)}
            results[run.name] = json.loads((run / "eval.json").read_text())
            rows.append(row(name, seed, results[run.name], t1 - t0))
    print(f"\nFashion-MNIST test split, first {args.max_examples} images, IW bound with K = {args.num_samples}; "
          f"{args.budget} of hvae train each\n")  # fmt: skip
    print(table(rows))
    record = {
        "commit": commit(),
        "budget": args.budget,
        "num_samples": args.num_samples,
        "max_examples": args.max_examples,
        "timings_s": timings,
        "rows": rows,
        "results": results,
    }
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
