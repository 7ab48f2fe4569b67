"""The training job: data in memory, the public training step, metrics, checkpoints, exact resume.

The step is the one a user's own loop would write (``loss = model(x).loss; loss.backward();
opt.step()``), guarded: an update whose loss or gradient norm is not finite is skipped and counted, never
applied, and a long run of skips stops training with :class:`TrainingDiverged`.

Under ``torchrun`` the same loop runs on every rank with ``DistributedDataParallel``: rank r reads and
preprocesses only rows ``[r*B/N, (r+1)*B/N)`` of every global batch of the single-process data order, draws
its posterior noise from its own stream (seeded ``train.seed + r``), free bits and KL balancing act on the
global batch's means (:mod:`hvae.objectives`), and the skip decision is all-reduced so every rank skips the
same updates. Rank 0 alone writes files and prints.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from . import distributed
from .aggressive import STATE_FILE as AGGRESSIVE_FILE
from .aggressive import start as start_aggressive
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .compiled import compile_cache
from .configbase import ConfigError
from .data import Dataset, load_dataset
from .distributed import Context, DistributedError
from .evaluate import elbo_terms
from .model import HierarchicalVAE, build_model
from .optim import make_optimizer
from .runconfig import (  # noqa: F401  (global_batch_size, resolve_config: public here too)
    RunConfig,
    TrainConfig,
    check_compatible,
    global_batch_size,
    parse_duration,
    resolve_config,
)
from .rundir import RUN_FILES, RunDir, RunDirError  # noqa: F401  (RUN_FILES, RunDirError: public here too)
from .schedules import learning_rate


class TrainingDiverged(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient. Under torchrun every rank raises it
    at the same step (the skip decision is shared), so the ranks leave the process group together."""

    collective = True


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    return distributed.resolve_device(name)


class _Metrics:
    """JSON lines plus TensorBoard, written by the training job only."""

    def __init__(self, run: RunDir, resume_step: int | None):
        self.path = run.metrics_path  # on resume, already trimmed to the checkpoint (RunDir.trim_metrics)
        self.file = open(self.path, "a")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run.tb_dir), purge_step=resume_step)
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


class _Clock:
    """Where a run's wall time goes: seconds per part, ``time.monotonic()`` from the run's start.

    Every interval between two :meth:`lap` calls is charged to one part, so the parts add up to the wall time
    up to the last lap. It reads the host clock only (a few reads per step) and never waits for a device: on
    CUDA the step is timed up to the read-back of its skip flags, where the loop waits anyway.
    """

    PARTS = ("start-up", "data loading", "compiling and probing", "batches", "step", "validation", "checkpoints",
             "metrics and progress")  # fmt: skip

    def __init__(self, started_at: float) -> None:
        self.started_at = self.last = started_at
        self.seconds = dict.fromkeys(self.PARTS, 0.0)

    def lap(self, part: str) -> float:
        """Charge the time since the last lap to ``part``; returns now."""
        now = time.monotonic()
        self.seconds[part] += now - self.last
        self.last = now
        return now

    def record(self) -> dict[str, Any]:
        """The breakdown as a metrics record's fields: ``wall_s`` (seconds from the start to the last lap),
        ``seconds`` and ``share`` (of wall_s) per part."""
        wall = self.last - self.started_at
        return {
            "wall_s": round(wall, 4),
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "share": {k: round(v / wall, 4) if wall > 0 else 0.0 for k, v in self.seconds.items()},
        }

    def summary(self) -> str:
        wall = self.last - self.started_at
        parts = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{k} {v:.1f} s ({100 * v / wall:.0f}%)" for k, v in parts if wall > 0 and v >= 0.05)
        return f"wall time {wall:.1f} s: {shown}"


def _ahead(batches):
    """Yield the items of ``batches``, preparing the next one in a background thread while the caller works
    on the current one (the step). The values and their order are those of ``batches``: a batch's noise
    comes from its own generator, not from the training stream."""
    from concurrent.futures import ThreadPoolExecutor

    end = object()
    with ThreadPoolExecutor(1, thread_name_prefix="hvae-batches") as pool:
        pending = pool.submit(next, batches, end)
        while True:
            x = pending.result()
            if x is end:
                return
            pending = pool.submit(next, batches, end)
            yield x


def _inline(batches):
    """The items of ``batches`` as they are made, in the caller's thread (a generator, so that ``close`` works
    as on :func:`_ahead`)."""
    yield from batches


class TrainingInterrupted(RuntimeError):
    """SIGTERM or SIGINT stopped training after a complete step and a checkpoint. ``signum``: the signal;
    ``exit_code``: 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), as a shell reports it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)


class _StopRequests:
    """SIGTERM and SIGINT while training: the first asks the loop to stop after the step under way (it writes
    a checkpoint); a second of the same kind stops at once, as the signal would without hvae."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # asked twice: stop now
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(
    config: RunConfig,
    out: str | Path,
    *,
    raw: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log=print,
    started_at: float | None = None,
) -> Path:
    """Train a model as ``config`` says, writing the run into ``out``; returns the run directory.

    ``raw`` is the user's config mapping (to tell given values from defaults). With ``resume`` the run in
    ``out`` continues exactly where its latest checkpoint stopped. Under torchrun every rank calls this
    (see the module docstring); only rank 0 writes and logs. ``started_at``: the ``time.monotonic()`` that
    ``train.max_time`` counts from (default: now; ``hvae train`` passes its own start).

    SIGTERM or SIGINT (Ctrl-C) ends the step under way, writes a checkpoint and raises
    :class:`TrainingInterrupted`; ``train.max_time`` writes a checkpoint and the model and returns.
    """
    started_at = time.monotonic() if started_at is None else started_at
    with _StopRequests() as stops, distributed.session(config.train.device, config.train.dist_timeout) as ctx:
        return _train(
            config, RunDir(out), raw or {}, resume, overwrite, log if ctx.is_main else _silent, ctx, stops, started_at
        )


def _silent(_message: str) -> None:
    pass


def _has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@dataclass
class StepResult:
    """What :func:`train_step` did: the model's output, the gradient norm (before clipping, a 0-d tensor
    on the device), whether the update was applied, why not (``skipped``: None when applied), and whether
    any rank asked to stop (``stop``)."""

    out: Any
    grad_norm: torch.Tensor
    applied: bool
    skipped: str | None = None
    stop: bool = False


def train_step(
    model: HierarchicalVAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    *,
    step: int | None = None,
    config: TrainConfig | None = None,
    scaler: torch.amp.GradScaler | None = None,
    ema=None,
    forward=None,
    ctx: Context | None = None,
    stop: bool = False,
) -> StepResult:
    """One guarded optimizer update on the batch ``x`` (B, *data_shape), on the model's device.

    ``loss = model(x).loss; loss.backward(); optimizer.step()``, guarded: an update whose loss or gradient
    norm is not finite (or whose norm is above ``config.skip_threshold``) is skipped, never applied.
    ``step``: the training step that sets the KL weight (default: the model's own counter). ``config``: the
    :class:`TrainConfig` whose ``precision``, ``grad_clip``, ``skip_threshold`` and ``ema_decay`` apply
    (default: the defaults). ``forward``: the module to call (a ``DistributedDataParallel`` wrapper of
    ``model``); ``ctx``: under torchrun, the skip decision and ``stop`` (this rank asks to stop after this
    step) are all-reduced in one collective, so every rank skips and stops at the same step.
    The gradients are cleared on return.
    """
    tc = config or TrainConfig()
    ctx = ctx or Context()
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    forward = forward or model
    device = x.device
    with _autocast(tc.precision, device):
        # the KL weight from the host's step count: the model's own step is on the device, and reading
        # it back would make the host wait for the GPU in the middle of every forward pass
        out = forward(x, beta=model.beta_at(step) if step is not None else None)
    loss = out.loss
    loss_ok = torch.isfinite(loss)
    # backward runs whatever the loss (a non-finite one gives a non-finite norm, and the update is skipped
    # below): deciding first would read the loss back, a wait on an accelerator, and under DDP every rank
    # must run it anyway (its all-reduce is collective)
    # train.grad_norm_per: dim backpropagates the loss per data dimension (VDVAE's vae.py), so grad_clip,
    # skip_threshold and the logged norm are of that gradient; the logged loss stays per example
    if tc.grad_norm_per == "dim":
        scaler.scale(loss / math.prod(model.config.data_shape)).backward()
    else:
        scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if tc.grad_clip is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    else:  # the norm alone, for the skip test and the log
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    # one decision for all ranks: skip if the loss or the gradient norm is non-finite on any of them, or the
    # norm is above train.skip_threshold (VDVAE's guard against rare huge updates); stop if any rank asks
    small = grad_norm <= tc.skip_threshold if tc.skip_threshold is not None else torch.isfinite(grad_norm)
    flags = torch.stack([loss_ok, torch.isfinite(grad_norm), small]).to(device, torch.float32)
    # the stop request rides in the same all-reduce; a fill on the device, not a host-to-device copy
    flags = torch.cat([flags, flags.new_zeros(1) if stop else flags.new_ones(1)])
    loss_ok_all, grad_ok_all, small_all, go_on_all = (bool(f) for f in ctx.all_min(flags).tolist())
    applied = loss_ok_all and grad_ok_all and small_all
    skipped = None
    if applied:
        scaler.step(optimizer)  # optimizer.step(); with fp16 first un-scaled (the scaler found no inf)
        if ema is not None:
            if tc.ema_decay is None:
                raise ValueError("train_step: ema was given but config.ema_decay is not set; set train.ema_decay")
            _ema_update(ema, model, tc.ema_decay)
    else:
        skipped = (
            "a non-finite loss"
            if not loss_ok_all
            else "a non-finite gradient"
            if not grad_ok_all
            else f"a gradient norm above train.skip_threshold={tc.skip_threshold:g}"
        )
    if scaler.is_enabled():
        scaler.update()  # halves the scale after an overflow (that step counts as skipped)
    optimizer.zero_grad(set_to_none=True)
    return StepResult(out, grad_norm, applied, skipped, not go_on_all)


@dataclass
class _Job:
    """Everything the training loop works with, built by :func:`_train`."""

    model: HierarchicalVAE
    step_model: Any  # the model, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: Any  # AveragedModel or None
    dataset: Dataset
    val_x: torch.Tensor | None
    config: RunConfig
    run: RunDir
    ctx: Context
    log: Any
    batch_size: int
    total_steps: int
    channels_last: bool
    stops: _StopRequests
    deadline: float | None  # time.monotonic() at which train.max_time is up
    clock: _Clock
    steps_left: Any  # () -> the steps left: those that fit in train.max_time at the pace so far, else the epochs'
    state: dict[str, Any] = field(default_factory=dict)
    metrics: Any = None
    pace: dict[str, float] = field(default_factory=dict)  # the loop's start: "time", "step"
    resumed_from: Path | None = None  # the checkpoint a resumed run started from
    aggressive: Any = None  # train.aggressive_encoder's phase (hvae.aggressive.AggressiveEncoder) or None

    @property
    def eval_model(self):
        return self.ema.module if self.ema is not None else self.model


def _train(
    config: RunConfig,
    run: RunDir,
    raw: dict[str, Any],
    resume: bool,
    overwrite: bool,
    log,
    ctx: Context,
    stops: _StopRequests,
    started_at: float,
) -> Path:
    # nothing is removed or written before the config, the data and the model are known to be good
    ctx.run_on_main(lambda: run.check(resume, overwrite))
    clock = _Clock(started_at)
    clock.lap("start-up")
    tc = config.train
    device = ctx.device
    dataset = load_dataset(config.data)
    clock.lap("data loading")
    batch_size = global_batch_size(tc, ctx.world_size)
    config = resolve_config(config, raw, dataset, batch_size)
    if resume:
        # model and data must be the run's; training and evaluation settings may change (e.g. more epochs)
        saved = RunConfig.from_yaml(run.config_path)
        check_compatible(saved, config)

    torch.manual_seed(tc.seed)
    model = build_model(config.model).to(device)
    val_x = dataset.eval_tensor("val") if len(dataset.val) else None
    clock.lap("data loading")
    for name, x in (("training", _first_batch(dataset)), ("validation", val_x)):
        if x is not None:
            try:
                model.likelihood.check_support(x)
            except ValueError as e:
                raise ConfigError(f"the {name} data do not fit the model: {e}") from None
    channels_last = tc.channels_last and config.model.block != "mlp"
    if channels_last:
        # Module.to takes memory_format at run time; torch's stubs list only device, dtype and tensor
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
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
        # free bits and KL balancing on the global batch's means (hvae.objectives): one small all-reduce a step
        model.batch_sum = ctx.all_sum
    settings: dict[str, Any] = {k: v for k, v in (("betas", tc.adam_beta2), ("eps", tc.adam_eps)) if v is not None}
    if "betas" in settings:
        settings["betas"] = (0.9, tc.adam_beta2)
    opt = make_optimizer(model, lr=tc.lr, name=tc.optimizer, weight_decay=tc.weight_decay, **settings)
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
    ckpt: Path | None = None
    if resume:
        ckpt = run.resume_checkpoint(log)
        if ckpt is None:
            if (run.model_dir / "model.safetensors").is_file():  # finished, its checkpoints removed
                raise CheckpointError(
                    f"{run.path} has no checkpoint to resume from (checkpoints/ is gone), but its trained model is "
                    f"in {run.model_dir}; to train further, start a new run in another folder"
                )
            raise CheckpointError(f"{run.path} has no checkpoint: {run.restart_advice()}")
        _check_checkpoint_model(ckpt, config.model, run)
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
                f"cannot resume: {run.path} has already trained {state['step']} steps ({state['epoch']} epochs), "
                f"more than the {total_steps} that {asked} ask for, so there is nothing to train; ask for more, "
                f"or use the run as it is (hvae eval {run.path})"
            )
        resume_step = state["step"]
        log(f"resuming {run.path} at step {state['step']} (epoch {state['epoch']}, batch {state['batch']})")
        if ctx.is_main:
            reached = max((r.get("step", 0) for r in run.read_metrics().records), default=0)
            if reached > resume_step:  # the metrics were logged after the checkpoint: those steps are lost
                log(
                    f"note: the run had reached step {reached} at least; the {reached - resume_step} steps after "
                    f"the checkpoint are trained again"
                )

    step_model: Any = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    deadline = None if tc.max_time is None else started_at + parse_duration(tc.max_time)
    pace: dict[str, float] = {}  # the loop's start (time, step), for the steps that fit in train.max_time

    def steps_left() -> int:
        # auto-compilation compiles only when the steps left would run compile_after_s eagerly: under a time
        # budget those are the steps that fit in it at the pace so far (since the last compiling or probing
        # step: the loop restarts the pace there), not the epochs'.
        left = total_steps - state["step"]
        done = state["step"] - pace.get("step", state["step"])
        if deadline is None or done <= 0:
            return left
        per_step = (time.monotonic() - pace["time"]) / done
        return min(left, int(max(0.0, deadline - time.monotonic()) / per_step))

    # TrainConfig turns the older true / false into always / never
    model.set_compile(cast(str, tc.compile), after_s=tc.compile_after_s, steps_left=steps_left)
    compile_cache(tc.compile_cache)

    ctx.run_on_main(lambda: _start_writing(run, config, dataset, resume, resume_step, overwrite, log))
    job = _Job(
        model=model,
        step_model=step_model,
        opt=opt,
        scaler=scaler,
        ema=ema,
        dataset=dataset,
        val_x=val_x,
        config=config,
        run=run,
        ctx=ctx,
        log=log,
        batch_size=batch_size,
        total_steps=total_steps,
        channels_last=channels_last,
        stops=stops,
        deadline=deadline,
        clock=clock,
        steps_left=steps_left,
        state=state,
        pace=pace,
        resumed_from=ckpt,
        metrics=_Metrics(run, resume_step) if ctx.is_main else None,
    )
    try:
        _loop(job)
        _sync_ema(ema, model)
        ctx.run_on_main(lambda: job.eval_model.save_pretrained(run.model_dir))
        clock.lap("checkpoints")
        if job.metrics is not None:
            job.metrics.write({"split": "timing", "step": state["step"], "epoch": state["epoch"], **clock.record()})
        log(clock.summary())
    except (TrainingDiverged, TrainingInterrupted):
        raise
    except (DistributedError, RuntimeError) as e:
        if not (ctx.distributed and _is_comm_failure(e)):
            raise
        raise DistributedError(
            f"rank {ctx.rank} of {ctx.world_size} lost the other ranks at step {state['step']} ({e}). "
            f"The latest complete checkpoint is in {run.checkpoints_dir}; continue with "
            f"hvae train --resume {run.path} (on any number of processes)"
        ) from e
    finally:
        if job.metrics is not None:
            job.metrics.close()
    return run.path


def _check_checkpoint_model(ckpt: Path, now, run: RunDir) -> None:
    """A run config.yaml edited by hand after training began: name the model settings that differ from the
    ones the checkpoint was trained with (rather than a state_dict's size mismatches)."""
    from .config import ModelConfig

    try:
        saved = ModelConfig.from_dict(json.loads((ckpt / "model" / "config.json").read_text())).to_dict()
    except (OSError, ValueError):  # unreadable: load_checkpoint names the file
        return
    current = now.to_dict()
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        shown = "; ".join(f"model.{k} is {current.get(k)!r} but was {saved.get(k)!r}" for k in diff[:4])
        raise ConfigError(
            f"cannot resume: {run.config_path} no longer describes the model its checkpoint {ckpt.name} trained "
            f"({shown}); restore those settings (only train.* and eval.* may change on resume), or start a new run"
        )


def _start_writing(
    run: RunDir, config: RunConfig, dataset: Dataset, resume: bool, resume_step: int | None, overwrite: bool, log
) -> None:
    """The run's first writes: clear the old run (``overwrite``) or trim its metrics to the checkpoint
    (resume), then the resolved config and the tokeniser."""
    run.prepare(resume, overwrite)
    if resume_step is not None:
        run.trim_metrics(resume_step, log)
    run.write_config(config)
    if dataset.tokenizer is not None:  # so the trained model decodes its own samples (hvae.data.text)
        dataset.tokenizer.save(run.tokenizer_path)


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


def _loop(job: _Job) -> None:
    model, opt, ema, ctx, log, state = job.model, job.opt, job.ema, job.ctx, job.log, job.state
    tc = job.config.train
    device = ctx.device
    steps_per_epoch = job.dataset.num_batches("train", job.batch_size)
    total_steps = job.total_steps
    consecutive_skips = 0
    progress = None
    if tc.progress and ctx.is_main:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=state["step"], desc="train", dynamic_ncols=True, file=sys.stderr)
    window: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    clock = job.clock
    clock.lap("start-up")

    def checkpoint(best: bool = False) -> None:
        # collective: every rank hands in its random-number state, rank 0 writes, and no rank goes on
        # before the checkpoint is complete
        rng = None
        if ctx.distributed:
            states = ctx.all_gather_object({k: v.cpu() for k, v in distributed.rng_state(device).items()})
            rng = {f"rank{r}.{k}": v for r, st in enumerate(states) for k, v in st.items()}
            rng["torch_cpu"] = states[0]["torch_cpu"].clone()  # safetensors refuses shared storage
        snapshot = {k: state[k] for k in _STATE_KEYS}
        extra = None
        if job.aggressive is not None:  # its state, so that --resume takes the decisions of an unbroken run
            snapshot["aggressive"], tensors = job.aggressive.state_dict()
            extra = {AGGRESSIVE_FILE: tensors} if job.aggressive.active else None
        ctx.run_on_main(lambda: save_checkpoint(job.run.path, model, opt, ema, snapshot, best, rng, extra))
        last["checkpoint"] = clock.lap("checkpoints")

    def validate() -> None:
        last["validation"] = time.monotonic()
        if job.val_x is None:
            checkpoint()
            return
        is_best = False
        if ctx.is_main:  # the other ranks wait in checkpoint()
            _sync_ema(ema, model)
            # a fixed seed for the posterior samples of validation, outside the training RNG stream: a run
            # resumed after a validation continues exactly as one that never stopped
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(tc.seed)
                v = _validate(job.eval_model, job.val_x.to(device), job.config.eval.batch_size)
            job.metrics.write({"split": "val", "step": state["step"], "epoch": state["epoch"], **v})
            is_best = state["best_val"] is None or v["elbo"] > state["best_val"]
            if is_best:
                state["best_val"] = v["elbo"]
        last["validation"] = clock.lap("validation")
        checkpoint(best=is_best)

    compile_events = 0
    compiler = model.compiler  # a LazyCompile, set by set_compile
    done = state["step"] >= total_steps
    stop_signal: int | None = None
    step_began: float | None = None  # host time of the last step (each step reads its skip flags back)
    job.pace.update(time=time.monotonic(), step=state["step"])
    last = {"validation": time.monotonic(), "checkpoint": time.monotonic()}  # for train.*_every_s

    def due(every_s: float | None, every: int, since: float, step: int) -> bool:
        # a schedule in seconds is checked at log steps only, and under torchrun decided for all ranks at once
        # (a checkpoint is collective): due when due on any rank
        if every_s is None:
            return step % every == 0
        if step % tc.log_every:
            return False
        late = time.monotonic() - since >= every_s
        return bool(ctx.all_min(torch.tensor([0.0 if late else 1.0], device=device)).item() == 0.0)

    aggressive = job.aggressive = start_aggressive(job, job.resumed_from)  # train.aggressive_encoder, or None
    while not done and state["epoch"] < tc.epochs:
        model.train()
        # each rank reads and preprocesses only its rows [r*B/N, (r+1)*B/N) of every global batch
        batches = job.dataset.batches(
            "train", job.batch_size, epoch=state["epoch"], start_batch=state["batch"], part=(ctx.rank, ctx.world_size)
        )
        # the next batch is prepared in a background thread only when the step runs on an accelerator: on the
        # CPU the thread's torch ops and the step's share the same cores, and their thread pools oversubscribe
        # them (measured: the step 2.3x slower with the thread than without it; benchmarks/RESULTS.md)
        ahead = _ahead(batches) if device.type != "cpu" else _inline(batches)
        try:
            for x in ahead:
                x = _to_device(x, device, job.channels_last)
                # under train.max_time a cosine decay ends with the budget: its horizon is the steps that fit in it
                horizon = total_steps if job.deadline is None else state["step"] + job.steps_left()
                for g in opt.param_groups:
                    g["lr"] = learning_rate(tc, state["step"], steps_per_epoch, horizon)
                # train.kl_warmup_fraction is a fraction of the run's steps (model.kl_warmup_steps of total_steps);
                # under train.max_time of the budget's: the KL weight is read at the same fraction of the horizon
                kl_step = state["step"]
                if job.deadline is not None and tc.kl_warmup_fraction is not None:
                    kl_step = min(total_steps, state["step"] * total_steps // max(1, horizon))
                # this rank asks to stop on a signal, or when the next step (as long as the last) would end past
                # train.max_time; the step's all-reduce decides for all
                now = clock.lap("batches")
                last_step_s, step_began = (now - step_began if step_began is not None else 0.0), now
                compiling = compiler.status.startswith(("compiling", "probing"))
                timed_out = job.deadline is not None and now + last_step_s >= job.deadline
                if aggressive is not None and not timed_out:  # He et al. 2019: the encoder catches up first
                    aggressive.before_step(state["step"], model.beta_at(kl_step))  # timed with the step
                r = train_step(
                    model,
                    opt,
                    x,
                    step=kl_step,
                    config=tc,
                    scaler=job.scaler,
                    ema=ema,
                    forward=job.step_model,
                    ctx=ctx,
                    stop=job.stops.signum is not None or timed_out,
                )
                compiling = compiling or len(compiler.events) > compile_events
                clock.lap("compiling and probing" if compiling else "step")
                while len(compiler.events) > compile_events:  # auto-compilation's decisions, as they come
                    log(f"note: train.compile: {compiler.events[compile_events]}")
                    compile_events += 1
                if r.applied:
                    consecutive_skips = 0
                else:
                    state["skipped"] += 1
                    consecutive_skips += 1
                    where = " on at least one rank" if ctx.distributed else ""
                    log(f"step {state['step']}: {r.skipped}{where}; update skipped")
                    if consecutive_skips >= tc.max_consecutive_skips:
                        checkpoint()
                        raise TrainingDiverged(
                            f"{consecutive_skips} consecutive updates had {r.skipped} (step {state['step']}); "
                            "training stopped, and the latest checkpoint holds the weights of the last good update. "
                            "Lower train.lr, set train.grad_clip, raise train.skip_threshold if set, or check the data "
                            "for extreme values"
                        )
                state["step"] += 1
                state["batch"] += 1
                if compiling and job.deadline is not None:
                    # the pace that sizes the budget's schedules (steps_left) starts again after compiling and
                    # probing: their minutes are spent, and counted as a step's they once made the horizon a
                    # tenth of the steps that fit, ending the KL warm-up and the cosine decay at the start
                    job.pace.update(time=time.monotonic(), step=state["step"])
                out = r.out
                if r.applied:
                    window.append(
                        {
                            "loss": out.loss.detach().float(),
                            "elbo": out.elbo.detach().mean(),
                            "log_px": out.log_px.detach().mean(),
                            "kl": torch.stack([k.detach().mean() for k in out.kl]) if out.kl else out.loss.new_zeros(0),
                            "grad_norm": r.grad_norm.detach().float(),  # read at the log step, with the rest
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
                    if job.metrics is not None:
                        job.metrics.write({"split": "train", "step": step, "epoch": state["epoch"], **rec})
                    if progress is not None:
                        progress.set_postfix(
                            loss=f"{rec['loss']:.2f}",
                            elbo=f"{rec['elbo']:.2f}",
                            kl="/".join(f"{k:.1f}" for k in rec["kl"]),
                            refresh=False,
                        )
                if progress is not None:
                    progress.update(1)
                clock.lap("metrics and progress")
                end_of_epoch = state["batch"] >= steps_per_epoch
                if end_of_epoch:
                    state["epoch"] += 1
                    state["batch"] = 0
                if (
                    step >= total_steps
                    or due(tc.eval_every_s, tc.eval_every, last["validation"], step)
                    or (end_of_epoch and tc.eval_every_s is None)
                ):
                    model.eval()
                    validate()
                    model.train()
                elif r.stop or due(tc.checkpoint_every_s, tc.checkpoint_every, last["checkpoint"], step):
                    checkpoint()
                if r.stop:
                    # why: a signal on any rank (the highest signal number, the same on every rank), else max_time
                    local = torch.tensor([-float(job.stops.signum or 0)], device=device)
                    stop_signal = int(-ctx.all_min(local).item())
                    done = True
                    break
                if step >= total_steps:
                    done = True
                    break
        finally:
            ahead.close()  # the batch being prepared is finished before training goes on (or the process ends)
    if progress is not None:
        progress.close()
    clock.lap("metrics and progress")
    if stop_signal:
        raise TrainingInterrupted(
            f"{signal.Signals(stop_signal).name} received: stopped after step {state['step']}, with a checkpoint in "
            f"{job.run.checkpoints_dir}; continue with hvae train --resume {job.run.path}",
            stop_signal,
        )
    if stop_signal == 0:
        log(f"train.max_time={tc.max_time} reached at step {state['step']} of {total_steps}: checkpoint written")
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
