"""The training job: data in memory, the public training step, metrics, checkpoints, exact resume.

The step is the one a user's own loop would write (``loss = model(x).loss; loss.backward();
opt.step()``), guarded: an update whose loss or gradient norm is not finite is skipped and counted, never
applied, and a long run of skips stops training with :class:`TrainingDiverged`.

Under ``torchrun`` the same loop runs on every rank with ``DistributedDataParallel``: rank r takes rows
``[r*B/N, (r+1)*B/N)`` of every global batch of the single-process data order, draws its posterior noise
from its own stream (seeded ``train.seed + r``), and the skip decision is all-reduced so every rank skips
the same updates. Rank 0 alone writes files and prints.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from . import distributed
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, load_yaml
from .data import Dataset, load_dataset
from .distributed import Context, DistributedError
from .evaluate import elbo_terms
from .files import atomic_write_text
from .model import HierarchicalVAE, build_model
from .optim import make_optimizer
from .runconfig import RunConfig

RUN_FILES = ("config.yaml", "metrics.jsonl", "tb", "checkpoints", "model", "eval.json", "report.html", "samples")
RUN_FILES += ("tokenizer.json",)  # text runs: the tokeniser that decodes the model's samples


class TrainingDiverged(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient. Under torchrun every rank raises it
    at the same step (the skip decision is shared), so the ranks leave the process group together."""

    collective = True


class RunDirError(ValueError):
    """The output directory cannot be used for this run as asked."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    return distributed.resolve_device(name)


def global_batch_size(tc, world_size: int) -> int:
    """Examples per optimizer step over all ranks; with ``batch_size_per: global`` it must split evenly."""
    if tc.batch_size_per == "rank":
        return tc.batch_size * world_size
    if tc.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size: {tc.batch_size} does not divide by the {world_size} ranks; choose a multiple of "
            f"{world_size}, or set train.batch_size_per=rank to give every rank batch_size examples"
        )
    return tc.batch_size


def learning_rate(cfg, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Learning rate at ``step``: linear warm-up, then constant, cosine or per-epoch exponential decay."""
    lr = cfg.lr
    if cfg.lr_warmup_steps and step < cfg.lr_warmup_steps:
        return lr * (step + 1) / cfg.lr_warmup_steps
    if cfg.lr_decay == "cosine":
        t = min(1.0, (step - cfg.lr_warmup_steps) / max(1, total_steps - cfg.lr_warmup_steps))
        return cfg.lr_min + 0.5 * (lr - cfg.lr_min) * (1 + math.cos(math.pi * t))
    if cfg.lr_decay == "exponential":
        return lr * cfg.lr_decay_rate ** (step // max(1, steps_per_epoch))
    return lr


def resolve_config(cfg: RunConfig, raw: dict[str, Any], dataset: Dataset, batch_size: int | None = None) -> RunConfig:
    """Fill what the data decide: ``model.data_shape`` (when not given) and the KL warm-up in steps
    (``batch_size``: the global batch, default ``train.batch_size``)."""
    model_raw = raw.get("model") or {}
    model = cfg.model
    shape = list(dataset.shape)
    if list(model.data_shape) != shape:
        if "data_shape" in model_raw:
            raise ConfigError(
                f"model.data_shape is {list(model.data_shape)} but the data have examples of shape {shape}; "
                f"set model.data_shape={shape} (or data.flatten to match an MLP model)"
            )
        model = model.replace(data_shape=shape)
    if cfg.data.dequantize and model.likelihood != "gaussian":
        # dequantised pixels are continuous: only a density scores them (its bound in the discrete space is
        # the density's plus the Jacobian); the other likelihoods score the discrete values themselves
        raise ConfigError(
            f"data.dequantize: true makes the data continuous, but likelihood {model.likelihood} scores discrete "
            "values; set data.dequantize: false (or likelihood: gaussian)"
        )
    levels = dataset.levels
    if model.likelihood == "discretized_logistic_mixture" and cfg.data.binarize == "none" and levels is not None:
        if levels != 2**model.num_bits:  # the bins would not sit on the data's values
            bits = math.log2(levels)
            fix = (
                f"set model.num_bits={int(bits)}"
                if bits.is_integer()
                else f"use likelihood: categorical with num_classes: {levels}"
            )
            raise ConfigError(
                f"the data have {levels} levels but model.num_bits={model.num_bits} gives {2**model.num_bits} "
                f"bins, which would not sit on the data's values; {fix}"
            )
    tokenizer = getattr(dataset, "tokenizer", None)
    if tokenizer is not None:  # token ids: the classes and the padding id are the tokeniser's
        if model.likelihood != "categorical":
            raise ConfigError(
                f"data.source {cfg.data.source} gives token ids, which need a categorical sequence model, not "
                f"likelihood {model.likelihood}; start from configs/text_fortunes.yaml (model.preset: text_fortunes)"
            )
        wanted = {"num_classes": tokenizer.vocab_size, "pad_id": tokenizer.pad_id}
        for key, value in wanted.items():
            if getattr(model, key) != value and key in model_raw:
                raise ConfigError(
                    f"model.{key} is {getattr(model, key)} but the {cfg.data.tokenizer} tokenizer has "
                    f"{key} {value}; remove model.{key} (it is set from the data) or set it to {value}"
                )
        model = model.replace(**wanted)
    if cfg.train.kl_warmup_epochs is not None:
        batches = dataset.num_batches("train", batch_size or cfg.train.batch_size)
        steps = int(round(cfg.train.kl_warmup_epochs * batches))
        if "kl_warmup_steps" in model_raw and model.kl_warmup_steps not in (0, steps):
            raise ConfigError("set either train.kl_warmup_epochs or model.kl_warmup_steps, not both")
        model = model.replace(kl_warmup_steps=steps)
    return RunConfig(model=model, data=cfg.data, train=cfg.train, eval=cfg.eval)


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing run is continued only with ``resume``, replaced only with ``overwrite``,
    and ``overwrite`` applies only to a folder that holds an hvae run. Removes nothing."""
    if resume and overwrite:
        raise RunDirError("use either --resume or --overwrite, not both")
    if resume:
        if not (out / "config.yaml").is_file():
            raise RunDirError(f"{out} holds no run to resume (no config.yaml); start one with hvae train --out {out}")
        return
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} is a file; choose a directory for --out")
    if out.is_dir() and any(out.iterdir()):
        if not _holds_run(out):
            # run files are known by name only: in a folder that is not a run they may be the user's own
            raise RunDirError(
                f"{out} is not empty and holds no hvae run (no config.yaml written by hvae train)"
                + (", so --overwrite will not delete anything in it" if overwrite else "")
                + "; choose a new or empty folder for --out, or empty this one yourself"
            )
        if not overwrite:
            raise RunDirError(
                f"{out} already holds another run; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --out"
            )


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """:func:`check_run_dir`, then, with ``overwrite``, remove the old run's files (nothing else in the
    folder), and create the folder. Call it only when the new run is about to write."""
    check_run_dir(out, resume, overwrite)
    if overwrite and out.is_dir():
        for p in out.iterdir():
            if p.name in RUN_FILES:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _holds_run(out: Path) -> bool:
    """Whether ``out/config.yaml`` is one ``hvae train`` wrote: the four sections, resolved (the model's
    ``data_shape`` filled in), valid as a run config."""
    try:
        data = load_yaml((out / "config.yaml").read_text(encoding="utf-8"))
        if not (isinstance(data, dict) and set(data) == {"model", "data", "train", "eval"}):
            return False
        if not (isinstance(data["model"], dict) and data["model"].get("data_shape")):
            return False
        RunConfig.from_dict(data)
    except (OSError, ValueError, TypeError, yaml.YAMLError):
        return False
    return True


def _trim_metrics(path: Path, resume_step: int, log) -> None:
    """Keep the records of ``metrics.jsonl`` up to the checkpoint's step (the later steps are about to be
    recomputed). A last line cut short (the run was killed while writing it) is dropped with a note; a
    damaged line before the last is an error that names it."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    kept = []
    for k, (i, ln) in enumerate(lines):
        try:
            record = json.loads(ln)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if k == len(lines) - 1:
                log(f"note: {path} line {i} was cut short (the run stopped while writing it); dropped")
                break
            raise RunDirError(
                f"{path} line {i} is damaged ({e}); repair or delete that line, then resume again"
            ) from None
        if record.get("step", 0) <= resume_step:
            kept.append(ln)
    atomic_write_text(path, "".join(ln + "\n" for ln in kept))


# data settings that change how the data are read, not what they are
_DATA_IO_KEYS = {"in_memory", "memory_budget_gb"}


def _check_compatible(saved: RunConfig, now: RunConfig) -> None:
    for section in ("model", "data"):
        a, b = getattr(saved, section).to_dict(), getattr(now, section).to_dict()
        diff = sorted(
            k for k in set(a) | set(b) if a.get(k) != b.get(k) and not (section == "data" and k in _DATA_IO_KEYS)
        )
        if diff:
            raise ConfigError(
                f"cannot resume: {section} settings differ from the run's "
                f"({', '.join(section + '.' + k for k in diff)}); only train.* and eval.* may change on resume"
            )


class _Metrics:
    """JSON lines plus TensorBoard, written by the training job only."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / "metrics.jsonl"  # on resume, already trimmed to the checkpoint (_trim_metrics)
        self.file = open(self.path, "a")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)
        except ImportError:  # tensorboard is optional at run time
            pass

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            split, step = record["split"], record["step"]
            for k, v in record.items():
                if k in ("split", "step", "epoch"):
                    continue
                if isinstance(v, list):
                    for i, vi in enumerate(v):
                        self.tb.add_scalar(f"{split}/{k}/layer{i + 1}", vi, step)
                elif isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _validate(model: HierarchicalVAE, x: torch.Tensor, batch_size: int) -> dict[str, Any]:
    terms = elbo_terms(model, x, batch_size)
    return {
        "elbo": terms["elbo"].mean().item(),
        "log_px": terms["log_px"].mean().item(),
        "kl": [k.mean().item() for k in terms["kl"]],
    }


def train(
    config: RunConfig,
    out: str | Path,
    *,
    raw: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log=print,
) -> Path:
    """Train a model as ``config`` says, writing the run into ``out``; returns the run directory.

    ``raw`` is the user's config mapping (to tell given values from defaults). With ``resume`` the run in
    ``out`` continues exactly where its latest checkpoint stopped. Under torchrun every rank calls this
    (see the module docstring); only rank 0 writes and logs.
    """
    with distributed.session(config.train.device, config.train.dist_timeout) as ctx:
        return _train(config, Path(out), raw or {}, resume, overwrite, log if ctx.is_main else _silent, ctx)


def _silent(_message: str) -> None:
    pass


def _has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _train(
    config: RunConfig, run_dir: Path, raw: dict[str, Any], resume: bool, overwrite: bool, log, ctx: Context
) -> Path:
    # nothing is removed or written before the config, the data and the model are known to be good
    ctx.run_on_main(lambda: check_run_dir(run_dir, resume, overwrite))
    tc = config.train
    device = ctx.device
    dataset = load_dataset(config.data)
    batch_size = global_batch_size(tc, ctx.world_size)
    config = resolve_config(config, raw, dataset, batch_size)
    if resume:
        # model and data must be the run's; training and evaluation settings may change (e.g. more epochs)
        saved = RunConfig.from_yaml(run_dir / "config.yaml")
        _check_compatible(saved, config)

    torch.manual_seed(tc.seed)
    model = build_model(config.model).to(device)
    val_x = dataset.eval_tensor("val") if len(dataset.val) else None
    for name, x in (("training", _first_batch(dataset)), ("validation", val_x)):
        if x is not None:
            try:
                model.likelihood.check_support(x)
            except ValueError as e:
                raise ConfigError(f"the {name} data do not fit the model: {e}") from None
    channels_last = tc.channels_last and config.model.block != "mlp"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    elif tc.channels_last:
        log("note: train.channels_last applies to convolutional models only; ignored")
    if ctx.distributed:
        if _has_batch_norm(model):
            if device.type == "cuda":
                # batch statistics over the global batch, as one process would compute them
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                log(
                    "note: SyncBatchNorm needs GPUs; on the CPU each rank normalises with its own batch "
                    "statistics (rank 0's running statistics are kept)"
                )
        # every rank draws its own posterior noise: rank r's stream is seeded train.seed + r
        torch.manual_seed(distributed.rank_seed(tc.seed, ctx.rank))
    opt = make_optimizer(model, lr=tc.lr, name=tc.optimizer, weight_decay=tc.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
    ema = None
    if tc.ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # parameters are averaged; buffers (batch-norm statistics, the step counter) are copied: see _sync_ema
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=False)

    steps_per_epoch = dataset.num_batches("train", batch_size)
    total_steps = (
        tc.epochs * steps_per_epoch if tc.max_steps is None else min(tc.max_steps, tc.epochs * steps_per_epoch)
    )
    state: dict[str, Any] = {
        "step": 0,
        "epoch": 0,
        "batch": 0,
        "skipped": 0,
        "best_val": None,
        "world_size": ctx.world_size,
        "batch_size": batch_size,
    }
    resume_step = None
    if resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            if (run_dir / "model" / "model.safetensors").is_file():  # finished, its checkpoints removed
                raise CheckpointError(
                    f"{run_dir} has no checkpoint to resume from (checkpoints/ is gone), but its trained model is in "
                    f"{run_dir / 'model'}; to train further, start a new run in another folder"
                )
            raise CheckpointError(f"{run_dir} has no checkpoint yet; start it again with --overwrite")
        loaded = load_checkpoint(ckpt, model, opt, ema, device, ctx.rank, ctx.world_size)
        rng_restored = loaded.pop("rng_restored")
        saved_world, saved_batch = loaded.pop("world_size", 1), loaded.pop("batch_size", batch_size)
        state.update(loaded)
        if saved_batch != batch_size:
            # the global batch changed (batch_size_per: rank on another number of ranks): keep the epoch's
            # position in examples; the data order within the epoch is the same permutation
            state["batch"] = state["batch"] * saved_batch // batch_size
            log(f"note: the global batch is now {batch_size} (was {saved_batch}); resuming at batch {state['batch']}")
        if not rng_restored:
            torch.manual_seed(distributed.rank_seed(tc.seed, ctx.rank, state["step"]))
            log(
                f"note: the run had {saved_world} rank(s), now {ctx.world_size}: the posterior noise is reseeded, "
                "so it continues statistically but not bit for bit"
            )
        if state["step"] > total_steps:
            asked = f"train.epochs={tc.epochs}" + ("" if tc.max_steps is None else f", train.max_steps={tc.max_steps}")
            raise ConfigError(
                f"cannot resume: {run_dir} has already trained {state['step']} steps ({state['epoch']} epochs), "
                f"more than the {total_steps} that {asked} ask for, so there is nothing to train; ask for more, "
                f"or use the run as it is (hvae eval {run_dir})"
            )
        resume_step = state["step"]
        log(f"resuming {run_dir} at step {state['step']} (epoch {state['epoch']}, batch {state['batch']})")

    step_model: Any = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.set_compile(tc.compile, after_s=tc.compile_after_s, steps_left=lambda: total_steps - state["step"])

    ctx.run_on_main(lambda: _start_writing(run_dir, config, dataset, resume, resume_step, overwrite, log))
    metrics = _Metrics(run_dir, resume_step) if ctx.is_main else None
    eval_model = ema.module if ema is not None else model
    try:
        _loop(
            model, step_model, opt, scaler, ema, eval_model, dataset, val_x, config, state, run_dir, metrics,
            total_steps, batch_size, channels_last, ctx, log,
        )  # fmt: skip
    except TrainingDiverged:
        raise
    except (DistributedError, RuntimeError) as e:
        if not (ctx.distributed and _is_comm_failure(e)):
            raise
        raise DistributedError(
            f"rank {ctx.rank} of {ctx.world_size} lost the other ranks at step {state['step']} ({e}). "
            f"The latest complete checkpoint is in {run_dir / 'checkpoints'}; continue with "
            f"hvae train --resume {run_dir} (on any number of processes)"
        ) from e
    finally:
        if metrics is not None:
            metrics.close()
    _sync_ema(ema, model)
    ctx.run_on_main(lambda: eval_model.save_pretrained(run_dir / "model"))
    return run_dir


def _start_writing(
    run_dir: Path, config: RunConfig, dataset: Dataset, resume: bool, resume_step: int | None, overwrite: bool, log
) -> None:
    """The run's first writes: clear the old run (``overwrite``) or trim its metrics to the checkpoint
    (resume), then the resolved config and the tokeniser."""
    prepare_run_dir(run_dir, resume, overwrite)
    if resume_step is not None:
        _trim_metrics(run_dir / "metrics.jsonl", resume_step, log)
    atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    if dataset.tokenizer is not None:  # so the trained model decodes its own samples (hvae.data.text)
        dataset.tokenizer.save(run_dir / "tokenizer.json")


def _is_comm_failure(e: BaseException) -> bool:
    if isinstance(e, (DistributedError, torch.distributed.DistError)):
        return True
    text = str(e)
    return any(w in text for w in ("Gloo", "gloo", "NCCL", "Connection", "onnection reset", "imed out", "peer"))


def _autocast(precision: str, device: torch.device):
    """Autocast of the networks; the model casts network outputs to float32 before any log-probability."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    if device.type == "cuda":
        # a pinned host copy lets the transfer overlap with the previous step's kernels
        x = x.pin_memory().to(device, non_blocking=True)
    else:
        x = x.to(device)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def _ema_update(ema, model: torch.nn.Module, decay: float) -> None:
    """``ema.update_parameters(model)`` for the EMA of ``get_ema_multi_avg_fn(decay)``, without copying
    ``n_averaged`` (a CPU scalar) to the device at every step, which makes the host wait for the GPU."""
    if int(ema.n_averaged) == 0:  # the first update copies the weights (the buffer is on the CPU: no wait)
        ema.update_parameters(model)
        return
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.module.parameters()), [p.detach() for p in model.parameters()], 1 - decay)
    ema.n_averaged += 1


def _sync_ema(ema, model) -> None:
    """Give the EMA model the live model's buffers (batch-norm running statistics, step)."""
    if ema is not None:
        for b_ema, b in zip(ema.module.buffers(), model.buffers()):
            b_ema.copy_(b)


def _first_batch(dataset: Dataset) -> torch.Tensor:
    bs = min(256, len(dataset.train))
    return next(dataset.batches("train", bs, epoch=0, drop_last=False))


_STATE_KEYS = ("step", "epoch", "batch", "skipped", "best_val", "world_size", "batch_size")


def _loop(
    model, step_model, opt, scaler, ema, eval_model, dataset, val_x, config, state, run_dir, metrics, total_steps,
    batch_size, channels_last, ctx: Context, log,
):  # fmt: skip
    tc = config.train
    device = ctx.device
    steps_per_epoch = dataset.num_batches("train", batch_size)
    consecutive_skips = 0
    progress = None
    if tc.progress and ctx.is_main:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=state["step"], desc="train", dynamic_ncols=True, file=sys.stderr)
    window: list[dict[str, Any]] = []
    t_start = time.perf_counter()

    def checkpoint(best: bool = False) -> None:
        # collective: every rank hands in its random-number state, rank 0 writes, and no rank goes on
        # before the checkpoint is complete
        rng = None
        if ctx.distributed:
            states = ctx.all_gather_object({k: v.cpu() for k, v in distributed.rng_state(device).items()})
            rng = {f"rank{r}.{k}": v for r, st in enumerate(states) for k, v in st.items()}
            rng["torch_cpu"] = states[0]["torch_cpu"].clone()  # safetensors refuses shared storage
        snapshot = {k: state[k] for k in _STATE_KEYS}
        ctx.run_on_main(lambda: save_checkpoint(run_dir, model, opt, ema, snapshot, best, rng))

    def validate() -> None:
        if val_x is None:
            return
        is_best = False
        if ctx.is_main:  # the other ranks wait in checkpoint()
            _sync_ema(ema, model)
            # a fixed seed for the posterior samples of validation, outside the training RNG stream: a run
            # resumed after a validation continues exactly as one that never stopped
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(tc.seed)
                v = _validate(eval_model, val_x.to(device), config.eval.batch_size)
            metrics.write({"split": "val", "step": state["step"], "epoch": state["epoch"], **v})
            is_best = state["best_val"] is None or v["elbo"] > state["best_val"]
            if is_best:
                state["best_val"] = v["elbo"]
        checkpoint(best=is_best)

    compile_events = 0
    done = state["step"] >= total_steps
    while not done and state["epoch"] < tc.epochs:
        model.train()
        batches = dataset.batches("train", batch_size, epoch=state["epoch"], start_batch=state["batch"])
        for x in batches:
            x = _to_device(distributed.shard(x, ctx), device, channels_last)
            for g in opt.param_groups:
                g["lr"] = learning_rate(tc, state["step"], steps_per_epoch, total_steps)
            with _autocast(tc.precision, device):
                # the KL weight from the host's step count: the model's own step is on the device, and reading
                # it back would make the host wait for the GPU in the middle of every forward pass
                out = step_model(x, beta=model.beta_at(state["step"]))
            while len(model.compiler.events) > compile_events:  # auto-compilation's decisions, as they come
                log(f"note: train.compile: {model.compiler.events[compile_events]}")
                compile_events += 1
            loss = out.loss
            loss_ok = torch.isfinite(loss)
            # backward runs whatever the loss (a non-finite one gives a non-finite norm, and the update is
            # skipped below): deciding first would read the loss back, a wait on an accelerator, and under DDP
            # every rank must run it anyway (its all-reduce is collective)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            if tc.grad_clip is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            else:  # the norm alone, for the skip test and the log
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
            # one decision for all ranks: skip if the loss or the gradient norm is non-finite on any of them, or
            # the norm is above train.skip_threshold (VDVAE's guard against rare huge updates)
            small = grad_norm <= tc.skip_threshold if tc.skip_threshold is not None else torch.isfinite(grad_norm)
            flags = torch.stack([loss_ok, torch.isfinite(grad_norm), small]).to(device, torch.float32)
            loss_ok_all, grad_ok_all, small_all = (bool(f) for f in ctx.all_min(flags).tolist())
            ok = loss_ok_all and grad_ok_all and small_all
            if ok:
                scaler.step(opt)  # opt.step(); with fp16 first un-scaled (the scaler found no inf: norm finite)
                if ema is not None:
                    _ema_update(ema, model, tc.ema_decay)
                consecutive_skips = 0
            else:
                state["skipped"] += 1
                consecutive_skips += 1
                what = (
                    "a non-finite loss"
                    if not loss_ok_all
                    else "a non-finite gradient"
                    if not grad_ok_all
                    else f"a gradient norm above train.skip_threshold={tc.skip_threshold:g}"
                )
                where = " on at least one rank" if ctx.distributed else ""
                log(f"step {state['step']}: {what}{where}; update skipped")
                if consecutive_skips >= tc.max_consecutive_skips:
                    opt.zero_grad(set_to_none=True)
                    checkpoint()
                    raise TrainingDiverged(
                        f"{consecutive_skips} consecutive updates had {what} (step {state['step']}); "
                        "training stopped, and the latest checkpoint holds the weights of the last good update. "
                        "Lower train.lr, set train.grad_clip, raise train.skip_threshold if set, or check the data "
                        "for extreme values"
                    )
            if scaler.is_enabled():
                scaler.update()  # halves the scale after an overflow (that step counts as skipped)
            opt.zero_grad(set_to_none=True)
            state["step"] += 1
            state["batch"] += 1
            if ok:
                window.append(
                    {
                        "loss": loss.detach().float(),
                        "elbo": out.elbo.detach().mean(),
                        "log_px": out.log_px.detach().mean(),
                        "kl": torch.stack([k.detach().mean() for k in out.kl]),
                        "grad_norm": grad_norm.detach().float(),  # read at the log step, with the rest
                    }
                )
            step = state["step"]
            if step % tc.log_every == 0 and window:  # the same steps on every rank: skips are all-reduced
                rec = _summarise(window, ctx)
                window = []
                rec.update(
                    beta=out.beta,
                    lr=opt.param_groups[0]["lr"],
                    skipped=state["skipped"],
                    time=round(time.perf_counter() - t_start, 3),
                )
                if metrics is not None:
                    metrics.write({"split": "train", "step": step, "epoch": state["epoch"], **rec})
                if progress is not None:
                    progress.set_postfix(
                        loss=f"{rec['loss']:.2f}",
                        elbo=f"{rec['elbo']:.2f}",
                        kl="/".join(f"{k:.1f}" for k in rec["kl"]),
                        refresh=False,
                    )
            if progress is not None:
                progress.update(1)
            end_of_epoch = state["batch"] >= steps_per_epoch
            if end_of_epoch:
                state["epoch"] += 1
                state["batch"] = 0
            if step % tc.eval_every == 0 or end_of_epoch or step >= total_steps:
                model.eval()
                validate()
                model.train()
            elif step % tc.checkpoint_every == 0:
                checkpoint()
            if step >= total_steps:
                done = True
                break
    if progress is not None:
        progress.close()
    log(
        f"trained {state['step']} steps ({state['epoch']} epoch{'' if state['epoch'] == 1 else 's'}), "
        f"{state['skipped']} skipped updates; best validation ELBO "
        + (f"{state['best_val']:.3f} nats" if state["best_val"] is not None else "n/a")
    )


def _summarise(window: list[dict[str, Any]], ctx: Context | None = None) -> dict[str, Any]:
    """Means over the window (and over the ranks: the same number of examples each)."""
    n = len(window)
    if ctx is not None and ctx.distributed:
        kl = sum(w["kl"] for w in window) / n
        vec = torch.cat([torch.stack([sum(w[k] for w in window) / n for k in ("loss", "elbo", "log_px")]), kl])
        vec = ctx.all_sum(vec.float()) / ctx.world_size
        return {
            "loss": float(vec[0]),
            "elbo": float(vec[1]),
            "log_px": float(vec[2]),
            "kl": vec[3:].tolist(),
            "grad_norm": float(sum(w["grad_norm"] for w in window) / n),  # the same on every rank (averaged grads)
        }
    return {
        "loss": float(sum(w["loss"] for w in window) / n),
        "elbo": float(sum(w["elbo"] for w in window) / n),
        "log_px": float(sum(w["log_px"] for w in window) / n),
        "kl": (sum(w["kl"] for w in window) / n).tolist(),
        "grad_norm": float(sum(w["grad_norm"] for w in window) / n),
    }
