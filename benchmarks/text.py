"""Text benchmark (issue #32): do the latents of ``text_fortunes`` carry the sentence, and at what cost in bound,
against the yardstick of the same decoder with no latents, through the commands a user runs.

    python -m benchmarks.text                                   # every variant, seed 0, 15 minutes each
    python -m benchmarks.text --max-time 120 --variants preset all decoder_only --num-samples 10 --max-examples 200
    python -m benchmarks.text --seeds 0 1 2                     # the issue's protocol: 3 seeds x 15 CPU-minutes
    python -m benchmarks.text --list                            # the variants and their overrides

Two at a time on a 2-core machine (the protocol in half the wall time): ``--cores 0 1`` runs the first variant
pinned to core 0 and the second to core 1, each with one intra-op thread (``--threads``), and ``--append`` adds
each pair's runs to the results of the pairs before (the yardstick's run of a seed serves every later pair;
``--no-yardstick`` leaves it out once it is there)::

    python -m benchmarks.text --cores 0 1 --variants decoder_only preset
    python -m benchmarks.text --cores 0 1 --append --no-yardstick --variants seq_target word_dropout

Without ``--cores`` the runs go one after the other on the cores this process may use (start it under
``taskset -c N`` with ``OMP_NUM_THREADS=1`` to keep it to one). Every run records the cores and the threads it
had (``runs`` and ``rows`` of the results); with ``--cores`` its output goes to ``RUNS/NAME-SEED.log``.

Each variant is ``hvae train --config configs/text_fortunes.yaml <overrides> train.max_time=T train.seed=S``
(the config's 8 epochs lifted, so the budget ends every run; validation and checkpoints on a schedule of their own,
the same for all, so they cost every run alike), then
``hvae eval RUN --num-samples K --max-examples N`` (the test split: IW bound, bits per byte, KL and active units
per level, the nats the latents tell the decoder, the teacher-forced next-token accuracy with z ~ q and z ~ p,
and the reconstruction similarity, greedy and sampled, over all inputs and over those of at most 40 bytes; a few
sampled reconstructions of short inputs are in each run's eval.json, ``reconstruction_examples``). The yardstick,
``decoder_only``, is ``configs/text_fortunes_decoder_only.yaml``: the same Transformer decoder with no latents,
trained by the same trainer for the same time; its bound is its exact log-likelihood. Runs one after the other, or
two side by side, meet different loads on a shared machine: say so with the numbers.
Results go to ``benchmarks/results/text.json``; RESULTS.md is edited by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.commands import commit, write_record

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "configs" / "text_fortunes.yaml"
YARDSTICK = "decoder_only"
#: the eval.json numbers of issue #32's second round that every row carries
MEASURES = (
    "token_accuracy_q",
    "token_accuracy_p",
    "token_accuracy_gain",
    "reconstruction_similarity_sampled",
    "reconstruction_similarity_short",
    "reconstruction_similarity_sampled_short",
    "short_entries",
)


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
    # a KL target of 18 nats per sentence with word dropout: in 90 s on one shared core its latents told the decoder
    # 26 nats (the preset's 6), all of them in z_1
    seq_target = ["model.free_bits_mode=sequence", "model.free_bits=18", *word_dropout]
    # the same target with a minimum per level (free below it), so that z_2 and z_3 are not left empty: in
    # seq_target's runs z_1 took all the KL and z_3 held 0.04 nats
    seq_target_levels = [*seq_target, "model.free_bits_levels=[6,4,2]"]
    # the latents' features added at every decoder block, not only at the embedding: with them read once, the
    # 3-seed runs' latents held 62 nats that raised the next-token accuracy no higher than the decoder alone's.
    # configs/text_fortunes.yaml sets it since those runs, so `preset` and every remedy below include it;
    # `embedding_only` is the config as it was before (the runs of 2026-12-07 and earlier)
    every_layer = ["model.seq_cond_every_layer=true"]
    return {
        "preset": (PRESET, []),
        "embedding_only": (PRESET, ["model.seq_cond_every_layer=false"]),
        "word_dropout": (PRESET, word_dropout),
        "context": (PRESET, context),
        "kl_cycles": (PRESET, cycles),
        "seq_free_bits": (PRESET, seq_free_bits),
        "bn_vae": (PRESET, bn_vae),
        "aggressive": (PRESET, aggressive),
        "seq_target": (PRESET, seq_target),
        "seq_target_levels": (PRESET, seq_target_levels),
        "every_layer": (PRESET, every_layer),
        "seq_target_levels_every_layer": (PRESET, seq_target_levels + every_layer),
        # a higher floor per level (the preset's is 2 nats): more of the sentence in the latents, read at every block
        "every_layer_free_bits_3": (PRESET, [*every_layer, "model.free_bits=3"]),
        # lower floors: less KL to pay, less for the latents to hold
        "every_layer_free_bits_1": (PRESET, [*every_layer, "model.free_bits=1"]),
        "every_layer_free_bits_0_5": (PRESET, [*every_layer, "model.free_bits=0.5"]),
        "all": (PRESET, word_dropout + context + cycles + seq_free_bits + bn_vae + aggressive),
        # with aggressive updates `all` took 8 training steps in 90 s on one core (the preset 227): the rest alone
        "all_but_aggressive": (PRESET, word_dropout + context + cycles + seq_free_bits + bn_vae),
        YARDSTICK: (ROOT / "configs" / "text_fortunes_decoder_only.yaml", []),
        # the yardstick with the same word dropout as the latent variants (it costs the decoder alone 4 nats at 15
        # minutes: benchmarks/RESULTS.md)
        "decoder_only_dropout": (ROOT / "configs" / "text_fortunes_decoder_only.yaml", word_dropout),
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
        # teacher-forced next-token accuracy with z ~ q and z ~ p, and the similarity of reconstructions sampled
        # from p(x | z ~ q) over all inputs and over the short ones (eval.json files before them: None)
        **{key: result.get(key) for key in MEASURES},
        "vs_decoder_only": None if yardstick is None else result["iw_bound"] - yardstick["iw_bound"],
    }


def table(rows: list[dict]) -> str:
    """Markdown: one line per run, then the mean over seeds of every variant that has several."""
    head = (
        "| variant | seed | steps | IW bound (nats) | bits/byte (IW) | IW - decoder-only | KL per level | "
        "latents tell the decoder (nats) | active units | reconstruction similarity | "
        "next-token accuracy q / p (q - p) | similarity sampled: all / short (greedy short, entries) |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        vs = "-" if r["vs_decoder_only"] is None or r["variant"] == YARDSTICK else f"{r['vs_decoder_only']:+.1f}"
        lines.append(
            f"| {r['variant']} | {r['seed']} | {r['steps']} | {r['iw_bound']:.1f} ± {r['iw_bound_stderr']:.1f} | "
            f"{r['bits_per_byte_iw']:.3f} | {vs} | {', '.join(f'{k:.2f}' for k in r['kl']) or 'no latents'} | "
            f"{r['latent_nats']:.2f} | {', '.join(f'{a}/{u}' for a, u in zip(r['active_units'], r['units'])) or '-'} | "
            f"{r['reconstruction_similarity']:.3f} | {_accuracy(r)} | {_sampled(r)} |"
        )
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
    several = {v: rs for v, rs in by_variant.items() if len(rs) > 1}
    if several:
        lines += [
            "",
            "| variant | seeds | IW bound, mean ± sd | IW - decoder-only, mean ± se | latents tell, mean | "
            "accuracy q - p, mean | sampled similarity of short entries, mean |",
        ]
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for v, rs in several.items():
            iw = [r["iw_bound"] for r in rs]
            d = [r["vs_decoder_only"] for r in rs if r["vs_decoder_only"] is not None]
            dtext = "-"
            if v != YARDSTICK and len(d) > 1:
                dtext = f"{statistics.mean(d):+.1f} ± {statistics.stdev(d) / math.sqrt(len(d)):.1f}"
            lines.append(
                f"| {v} | {len(rs)} | {statistics.mean(iw):.1f} ± {statistics.stdev(iw):.1f} | {dtext} | "
                f"{statistics.mean(r['latent_nats'] for r in rs):.2f} | {_mean(rs, 'token_accuracy_gain', '+.3f')} | "
                f"{_mean(rs, 'reconstruction_similarity_sampled_short', '.3f')} |"
            )
    return "\n".join(lines)


def _accuracy(r: dict) -> str:
    if r.get("token_accuracy_q") is None:
        return "-"
    return f"{r['token_accuracy_q']:.3f} / {r['token_accuracy_p']:.3f} ({r['token_accuracy_gain']:+.3f})"


def _sampled(r: dict) -> str:
    if r.get("reconstruction_similarity_sampled") is None:
        return "-"
    if not r.get("short_entries"):
        return f"{r['reconstruction_similarity_sampled']:.3f} / - (no short entry)"
    return (
        f"{r['reconstruction_similarity_sampled']:.3f} / {r['reconstruction_similarity_sampled_short']:.3f} "
        f"({r['reconstruction_similarity_short']:.3f}, {r['short_entries']})"
    )


def _mean(rows: list[dict], key: str, fmt: str) -> str:
    """The mean of ``key`` over the rows that have it ("-" if none)."""
    values = [r[key] for r in rows if r.get(key) is not None]
    return format(statistics.mean(values), fmt) if values else "-"


def _affinity() -> list[int]:
    """The cores this process may run on (``taskset``'s mask), which its child processes inherit."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _runner(core: int | None, threads: int | None, log: Path | None):
    """``hvae ARGS`` in a fresh process: on ``core`` alone (None: this process's cores) with ``threads`` intra-op
    threads (None: as the environment says), its output to ``log`` (None: this process's)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))

    def pin() -> None:  # in the child, before it starts: torch sizes its thread pool from what it may use
        if core is not None:
            os.sched_setaffinity(0, {core})

    def run(*args: str) -> None:
        out = open(log, "a") if log is not None else None  # noqa: SIM115 (closed below)
        try:
            subprocess.run(
                [sys.executable, "-m", "hvae", *args], check=True, env=env, preexec_fn=pin, stdout=out,
                stderr=subprocess.STDOUT if out else None,
            )  # fmt: skip
        finally:
            if out is not None:
                out.close()

    return run


def _one(name: str, seed: int, args, core: int | None, threads: int | None) -> tuple[str, dict, dict, str | None]:
    """Train, evaluate and (with ``--examples``) reconstruct one variant for one seed; returns the run's name, its
    eval.json, its record (cores, threads, seconds) and its reconstructions."""
    config, overrides = variants(args.cycle_steps)[name]
    run = args.runs / f"{name}-{seed}"
    args.runs.mkdir(parents=True, exist_ok=True)
    log = args.runs / f"{run.name}.log" if args.cores else None  # runs side by side: each its own log
    if log is not None:
        log.write_text("")
    hvae_ = _runner(core, threads, log)
    t0 = time.perf_counter()
    hvae_(
        "train", "--config", str(config), *overrides, f"train.max_time={args.max_time}",
        f"train.seed={seed}", "train.eval_every_s=600", "train.checkpoint_every_s=600",
        "train.max_steps=null", "train.epochs=1000",  # the budget, not the config's 8 epochs, ends every run
        "--out", str(run), "--overwrite", "--quiet",
    )  # fmt: skip
    t1 = time.perf_counter()
    limit = ["--max-examples", str(args.max_examples)] if args.max_examples else []
    hvae_("eval", str(run), "--num-samples", str(args.num_samples), *limit)
    t2 = time.perf_counter()
    result = json.loads((run / "eval.json").read_text())
    example = None
    if args.examples:  # every level from q(z | x), decoded greedily: the reconstructions (none without latents)
        if name == YARDSTICK:
            example = "(no latents: nothing to reconstruct)"
        else:
            hvae_(
                "sample", str(run), "--from-data", "--n", str(args.examples), "--keep-top", "3",
                "--decode", "greedy", "--overwrite",
            )  # fmt: skip
            example = (run / "samples" / "keep_top.txt").read_text()
    cores = [core] if core is not None else _affinity()
    record = {
        "variant": name, "seed": seed, "max_time": args.max_time, "cores": cores,
        "threads": threads if threads is not None else os.environ.get("OMP_NUM_THREADS"),
        "train_s": round(t1 - t0, 1), "eval_s": round(t2 - t1, 1), "commit": commit(),
    }  # fmt: skip
    return run.name, result, record, example


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    every = list(variants(1))
    p.add_argument("--variants", nargs="+", default=every, choices=every, help="which to run (the yardstick too)")
    p.add_argument("--list", action="store_true", help="print each variant's overrides and exit")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--max-time", default="15m", help="train.max_time of every run (e.g. 15m, 120)")
    p.add_argument("--cycle-steps", type=int, default=250, help="model.kl_cycle_steps of the kl_cycles variants")
    p.add_argument("--num-samples", type=int, default=100, help="K of the IW bound")
    p.add_argument("--max-examples", type=int, default=None, help="test examples scored (default: all)")
    p.add_argument("--runs", type=Path, default=Path("runs/text_bench"), help="folder for the run directories")
    p.add_argument("--examples", type=int, default=3, help="reconstructions printed per run (0: none)")
    p.add_argument(
        "--cores", nargs="+", type=int, default=None,
        help="run the variants side by side, each pinned to one of these cores (the first runs on the first "
        "core, the second on the second, ...; more runs than cores wait for a free one); default: one after "
        "the other on the cores this process may use (taskset's)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of each run (default: 1 with --cores)")
    p.add_argument("--no-yardstick", action="store_true", help="run only the variants named (not decoder_only too)")
    p.add_argument(
        "--append", action="store_true",
        help="add the runs to those already in --out (one pair after another; a run of the same name is replaced)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "text.json")
    args = p.parse_args(argv)
    if args.list:
        for name, (config, overrides) in variants(args.cycle_steps).items():
            print(f"{name}: {config.relative_to(ROOT)} {' '.join(overrides)}")
        return 0
    if args.cores is not None:
        allowed = set(_affinity())
        bad = [c for c in args.cores if c not in allowed]
        if bad or len(set(args.cores)) != len(args.cores):
            p.error(f"--cores {' '.join(map(str, args.cores))}: give distinct cores of {sorted(allowed)}")
    threads = args.threads if args.threads is not None else (1 if args.cores else None)
    if threads is not None and threads < 1:
        p.error("--threads must be >= 1")

    names = [v for v in args.variants if v != YARDSTICK]
    if not args.no_yardstick or YARDSTICK in args.variants:  # the yardstick first: every row needs it
        names = [YARDSTICK, *names]
    jobs = [(name, seed) for seed in args.seeds for name in names]
    record: dict = {"results": {}, "runs": {}, "reconstructions": {}}
    if args.append and args.out.is_file():
        old = json.loads(args.out.read_text())
        record.update({k: old.get(k, {}) for k in ("results", "runs", "reconstructions")})
    done = []
    if args.cores:  # one worker per core, each taking the next job when its run is over
        from concurrent.futures import ThreadPoolExecutor
        from queue import Queue

        free: Queue[int] = Queue()
        for c in args.cores:
            free.put(c)

        def on_a_free_core(job):
            core = free.get()
            try:
                return _one(*job, args, core, threads)
            finally:
                free.put(core)

        with ThreadPoolExecutor(len(args.cores)) as pool:
            done = list(pool.map(on_a_free_core, jobs))
    else:
        done = [_one(*job, args, None, threads) for job in jobs]
    for run_name, result, run_record, example in done:
        record["results"][run_name] = result
        record["runs"][run_name] = run_record
        if example is not None:
            record["reconstructions"][run_name] = example
    rows = []
    for run_name, r in record["runs"].items():
        result, yard = record["results"][run_name], record["results"].get(f"{YARDSTICK}-{r['seed']}")
        rows.append({**row(r["variant"], r["seed"], result, yard), "cores": r["cores"], "threads": r["threads"]})
    print(f"\ntest split, IW bound with K = {args.num_samples}; {args.max_time} of hvae train each\n")
    print(table(rows))
    record = {
        "commit": commit(),
        "max_time": args.max_time,
        "num_samples": args.num_samples,
        "rows": rows,
        **record,
    }
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
