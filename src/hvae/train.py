"""The training job: data in memory, the public training step, metrics, checkpoints, exact resume.

The step is the one a user's own loop would write (``loss = model(x).loss; loss.backward();
opt.step()``), guarded: an update whose loss or gradient norm is not finite is skipped and counted, never
applied, and a long run of skips stops training with :class:`TrainingDiverged`.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError
from .data import Dataset, load_dataset
from .evaluate import elbo_terms
from .model import HierarchicalVAE, _atomic_write_text, build_model
from .optim import make_optimizer
from .runconfig import RunConfig

RUN_FILES = ("config.yaml", "metrics.jsonl", "tb", "checkpoints", "model", "eval.json", "report.html", "samples")


class TrainingDiverged(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


class RunDirError(ValueError):
    """The output directory cannot be used for this run as asked."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name} was asked for, but this machine has no CUDA device; use auto or cpu")
    return dev


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


def resolve_config(cfg: RunConfig, raw: dict[str, Any], dataset: Dataset) -> RunConfig:
    """Fill what the data decide: ``model.data_shape`` (when not given) and the KL warm-up in steps."""
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
    if cfg.train.kl_warmup_epochs is not None:
        steps = int(round(cfg.train.kl_warmup_epochs * dataset.num_batches("train", cfg.train.batch_size)))
        if "kl_warmup_steps" in model_raw and model.kl_warmup_steps not in (0, steps):
            raise ConfigError("set either train.kl_warmup_epochs or model.kl_warmup_steps, not both")
        model = model.replace(kl_warmup_steps=steps)
    return RunConfig(model=model, data=cfg.data, train=cfg.train, eval=cfg.eval)


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing run is continued only with ``resume``, replaced only with ``overwrite``."""
    if resume and overwrite:
        raise RunDirError("use either --resume or --overwrite, not both")
    if resume:
        if not (out / "config.yaml").is_file():
            raise RunDirError(f"{out} holds no run to resume (no config.yaml); start one with hvae train --out {out}")
        return
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} is a file; choose a directory for --out")
    if out.is_dir() and any(out.iterdir()):
        ours = [p for p in out.iterdir() if p.name in RUN_FILES]
        if not overwrite:
            what = "another run" if (out / "config.yaml").exists() else "files"
            raise RunDirError(
                f"{out} already holds {what}; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --out"
            )
        for p in ours:  # only what a run writes: nothing else in the folder is touched
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _check_compatible(saved: RunConfig, now: RunConfig) -> None:
    for section in ("model", "data"):
        a, b = getattr(saved, section).to_dict(), getattr(now, section).to_dict()
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            raise ConfigError(
                f"cannot resume: {section} settings differ from the run's "
                f"({', '.join(section + '.' + k for k in diff)}); only train.* and eval.* may change on resume"
            )


class _Metrics:
    """JSON lines plus TensorBoard, written by the training job only."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # drop lines past the checkpoint: those steps are about to be recomputed
            kept = [
                ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step
            ]
            _atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))
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
    ``out`` continues exactly where its latest checkpoint stopped.
    """
    run_dir = Path(out)
    prepare_run_dir(run_dir, resume, overwrite)
    tc = config.train
    device = resolve_device(tc.device)
    dataset = load_dataset(config.data)
    config = resolve_config(config, raw or {}, dataset)
    if resume:
        # model and data must be the run's; training and evaluation settings may change (e.g. more epochs)
        saved = RunConfig.from_yaml(run_dir / "config.yaml")
        _check_compatible(saved, config)
    _atomic_write_text(run_dir / "config.yaml", config.to_yaml())

    torch.manual_seed(tc.seed)
    model = build_model(config.model).to(device)
    val_x = dataset.eval_tensor("val") if len(dataset.val) else None
    for name, x in (("training", dataset.train.x[:256]), ("validation", val_x)):
        if x is not None:
            try:
                model.likelihood.check_support(_first_batch(dataset) if name == "training" else x)
            except ValueError as e:
                raise ConfigError(f"the {name} data do not fit the model: {e}") from None
    opt = make_optimizer(model, lr=tc.lr, name=tc.optimizer, weight_decay=tc.weight_decay)
    ema = None
    if tc.ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # parameters are averaged; buffers (batch-norm statistics, the step counter) are copied: see _sync_ema
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=False)

    steps_per_epoch = dataset.num_batches("train", tc.batch_size)
    total_steps = (
        tc.epochs * steps_per_epoch if tc.max_steps is None else min(tc.max_steps, tc.epochs * steps_per_epoch)
    )
    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "skipped": 0, "best_val": None}
    resume_step = None
    if resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise CheckpointError(f"{run_dir} has no checkpoint yet; start it again with --overwrite")
        state.update(load_checkpoint(ckpt, model, opt, ema, device))
        resume_step = state["step"]
        log(f"resuming {run_dir} at step {state['step']} (epoch {state['epoch']}, batch {state['batch']})")

    metrics = _Metrics(run_dir, resume_step)
    eval_model = ema.module if ema is not None else model
    try:
        _loop(model, opt, ema, eval_model, dataset, val_x, config, state, run_dir, metrics, total_steps, log)
    finally:
        metrics.close()
    _sync_ema(ema, model)
    eval_model.save_pretrained(run_dir / "model")
    return run_dir


@torch.no_grad()
def _sync_ema(ema, model) -> None:
    """Give the EMA model the live model's buffers (batch-norm running statistics, step)."""
    if ema is not None:
        for b_ema, b in zip(ema.module.buffers(), model.buffers()):
            b_ema.copy_(b)


def _first_batch(dataset: Dataset) -> torch.Tensor:
    bs = min(256, len(dataset.train))
    return next(dataset.batches("train", bs, epoch=0, drop_last=False))


def _loop(model, opt, ema, eval_model, dataset, val_x, config, state, run_dir, metrics, total_steps, log):
    tc = config.train
    device = next(model.parameters()).device
    steps_per_epoch = dataset.num_batches("train", tc.batch_size)
    consecutive_skips = 0
    progress = None
    if tc.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=state["step"], desc="train", dynamic_ncols=True, file=sys.stderr)
    window: list[dict[str, Any]] = []
    t_start = time.perf_counter()

    def checkpoint(best: bool = False) -> None:
        save_checkpoint(
            run_dir, model, opt, ema, {k: state[k] for k in ("step", "epoch", "batch", "skipped", "best_val")}, best
        )

    def validate() -> None:
        if val_x is None:
            return
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

    done = state["step"] >= total_steps
    while not done and state["epoch"] < tc.epochs:
        model.train()
        batches = dataset.batches(
            "train", tc.batch_size, epoch=state["epoch"], start_batch=state["batch"], device=device
        )
        for x in batches:
            for g in opt.param_groups:
                g["lr"] = learning_rate(tc, state["step"], steps_per_epoch, total_steps)
            out = model(x)
            loss = out.loss
            ok = bool(torch.isfinite(loss))
            grad_norm = float("nan")
            if ok:
                loss.backward()
                max_norm = tc.grad_clip if tc.grad_clip is not None else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
                ok = math.isfinite(grad_norm)
            if ok:
                opt.step()
                if ema is not None:
                    ema.update_parameters(model)
                consecutive_skips = 0
            else:
                state["skipped"] += 1
                consecutive_skips += 1
                what = "loss" if not torch.isfinite(loss) else "gradient"
                log(f"step {state['step']}: non-finite {what}; update skipped")
                if consecutive_skips >= tc.max_consecutive_skips:
                    opt.zero_grad(set_to_none=True)
                    checkpoint()
                    raise TrainingDiverged(
                        f"{consecutive_skips} consecutive updates had a non-finite {what} (step {state['step']}); "
                        "training stopped, and the latest checkpoint holds the weights of the last good update. "
                        "Lower train.lr, set train.grad_clip, or check the data for extreme values"
                    )
            opt.zero_grad(set_to_none=True)
            state["step"] += 1
            state["batch"] += 1
            if ok:
                window.append(
                    {
                        "loss": loss.detach(),
                        "elbo": out.elbo.detach().mean(),
                        "log_px": out.log_px.detach().mean(),
                        "kl": torch.stack([k.detach().mean() for k in out.kl]),
                        "grad_norm": grad_norm,
                    }
                )
            step = state["step"]
            if step % tc.log_every == 0 and window:
                rec = _summarise(window)
                window = []
                rec.update(
                    beta=out.beta,
                    lr=opt.param_groups[0]["lr"],
                    skipped=state["skipped"],
                    time=round(time.perf_counter() - t_start, 3),
                )
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
        f"trained {state['step']} steps ({state['epoch']} epochs), {state['skipped']} skipped updates; "
        f"best validation ELBO {state['best_val'] if state['best_val'] is not None else 'n/a'}"
    )


def _summarise(window: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(window)
    return {
        "loss": float(sum(w["loss"] for w in window) / n),
        "elbo": float(sum(w["elbo"] for w in window) / n),
        "log_px": float(sum(w["log_px"] for w in window) / n),
        "kl": (sum(w["kl"] for w in window) / n).tolist(),
        "grad_norm": sum(w["grad_norm"] for w in window) / n,
    }
