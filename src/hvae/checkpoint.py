"""Training checkpoints: safetensors + JSON, written so that a kill at any moment leaves one loadable.

Layout inside ``RUN_DIR/checkpoints/``::

    step-000001200/  model/ (config.json, model.safetensors)  optimizer.safetensors  ema.safetensors  state.json
    latest.json      {"dir": "step-000001200"}   # replaced atomically after the folder is complete
    best.json        {"dir": "step-000000800", "val_elbo": ...}

A checkpoint folder is written under a temporary name, synced and renamed; only then does the pointer
file move to it (``os.replace``), and only then are folders no pointer names removed. Nothing is pickled:
optimizer tensors go to safetensors, everything else to JSON. Every safetensors file carries a digest of its
tensors (:func:`hvae.files.tensors_digest`); a file whose tensors changed since the save raises
:class:`hvae.files.DamagedFileError`, which names it. A distributed run stores the plain model,
the optimizer state (the same on every rank) and every rank's random-number state (``rank{r}.torch_cpu``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from .files import DamagedFileError, atomic_write_text, load_tensors, make_temp_dir, save_tensors, set_default_mode
from .model import HierarchicalVAE, load


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated or does not match the run. ``path``: the damaged file, when one is
    (as :class:`hvae.files.DamagedFileError`'s)."""

    def __init__(self, message: str, path: Path | None = None):
        super().__init__(message)
        self.path = path


# (mypy compares the bases' `path`, Path | None against Path; this class always sets a Path, right for both)
class DamagedCheckpointError(CheckpointError, DamagedFileError):  # type: ignore[misc]
    """A file of a checkpoint changed or cut short since it was written; ``path`` names it."""

    def __init__(self, path: Path, message: str):
        DamagedFileError.__init__(self, path, message)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                # a scalar (hvae's Adam's step counters are views of one tensor) is copied: safetensors
                # refuses tensors that share memory
                value = value.detach().contiguous().cpu()
                tensors[f"{pid}.{name}"] = value.clone() if value.dim() == 0 else value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: Path,
    model: HierarchicalVAE,
    optimizer: torch.optim.Optimizer,
    ema: torch.nn.Module | None,
    state: dict[str, Any],
    best: bool = False,
    rng: dict[str, torch.Tensor] | None = None,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write a complete checkpoint of ``step = state['step']`` and point ``latest`` (and ``best``) at it.

    ``rng``: the random-number states to store (a distributed run passes every rank's, keyed
    ``rank{r}.torch_cpu``); by default this process's. ``extra``: more tensors of the trainer's parts, file name
    -> tensors (their JSON side goes in ``state``), e.g. the aggressive phase's inner optimiser.
    """
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:09d}"
    final = ckpt_root / name
    tmp = make_temp_dir(ckpt_root)
    try:
        model.save_pretrained(tmp / "model")
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        save_tensors(opt_tensors, tmp / "optimizer.safetensors")
        if ema is not None:
            save_tensors(
                {k: v.detach().contiguous().cpu() for k, v in ema.state_dict().items()}, tmp / "ema.safetensors"
            )
        if rng is None:
            rng = {"torch_cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                for i, s in enumerate(torch.cuda.get_rng_state_all()):
                    rng[f"torch_cuda_{i}"] = s
        save_tensors(rng, tmp / "rng.safetensors")
        for file, tensors in (extra or {}).items():
            save_tensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / file)
        (tmp / "state.json").write_text(json.dumps({**state, "optimizer": opt_meta}, indent=1))
        for f in tmp.rglob("*"):
            if f.is_file():
                set_default_mode(f)  # safetensors' own temporary file left it 0600
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(ckpt_root / "latest.json", json.dumps({"dir": name, "step": state["step"]}))
    if best:
        atomic_write_text(
            ckpt_root / "best.json", json.dumps({"dir": name, "step": state["step"], "val_elbo": state.get("best_val")})
        )
    _prune(ckpt_root)
    return final


def _pointer(ckpt_root: Path, which: str) -> str | None:
    p = ckpt_root / f"{which}.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())["dir"]
    except (json.JSONDecodeError, KeyError):
        raise CheckpointError(f"{p} is damaged; delete it and resume from a folder in {ckpt_root}") from None


def _prune(ckpt_root: Path) -> None:
    keep = {_pointer(ckpt_root, "latest"), _pointer(ckpt_root, "best")}
    for d in ckpt_root.iterdir():
        if d.is_dir() and d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)


def saved_step(model_dir: Path) -> int:
    """The training step a saved model was written at (its ``step`` buffer), read without loading the rest.
    A file that cannot be read is a :class:`CheckpointError` whose ``path`` names it."""
    from safetensors import safe_open

    try:
        with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
            # (safetensors' safe_open has keys() but no `in`: SIM118 does not apply)
            return int(f.get_tensor("step")) if "step" in f.keys() else -1  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        path = model_dir / "model.safetensors"
        raise CheckpointError(f"{path} cannot be read ({e}); the file is truncated or damaged", path) from None


def latest_checkpoint(run_dir: Path, which: str = "latest") -> Path | None:
    """The folder the ``latest`` (or ``best``) pointer names, or None when the run has none yet."""
    ckpt_root = Path(run_dir) / "checkpoints"
    name = _pointer(ckpt_root, which)
    if name is None:
        return None
    d = ckpt_root / name
    if not d.is_dir():
        raise CheckpointError(f"{ckpt_root / (which + '.json')} names {d}, which is missing")
    return d


def load_checkpoint(
    ckpt: Path,
    model: HierarchicalVAE,
    optimizer: torch.optim.Optimizer,
    ema: torch.nn.Module | None,
    device,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """Restore model, optimizer, EMA and RNG states in place; return the trainer state (step, epoch, ...).

    The model and optimizer states are the same on every rank, so a checkpoint of N ranks loads on M.
    The random-number states are restored when the run had as many ranks as now (``rng_restored`` in the
    returned state says whether they were); otherwise the caller reseeds.
    """
    try:
        saved = load(ckpt / "model", map_location=device)
        model.load_state_dict(saved.state_dict())
        meta = json.loads((ckpt / "state.json").read_text())
        opt_tensors, _ = load_tensors(ckpt / "optimizer.safetensors", device)
        optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, meta.pop("optimizer")))
        if ema is not None:
            ema_file = ckpt / "ema.safetensors"
            if not ema_file.is_file():
                raise CheckpointError(f"{ckpt} has no EMA weights but train.ema_decay is set; unset it to resume")
            ema.load_state_dict(load_tensors(ema_file, device)[0])
        rng, _ = load_tensors(ckpt / "rng.safetensors")
    except (OSError, SafetensorError, ValueError, KeyError, json.JSONDecodeError, RuntimeError) as e:
        if isinstance(e, DamagedFileError):
            raise DamagedCheckpointError(e.path, str(e)) from None
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(
            f"checkpoint {ckpt} cannot be loaded ({e}); it is damaged or from another model",
            getattr(e, "path", None),  # the damaged file, when the error names one (DamagedFileError)
        ) from None
    saved_world = meta.get("world_size", 1)
    if world_size == 1 and saved_world == 1:
        torch.set_rng_state(rng["torch_cpu"])
        if torch.cuda.is_available():
            states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
        meta["rng_restored"] = True
    elif world_size == saved_world and f"rank{rank}.torch_cpu" in rng:
        torch.set_rng_state(rng[f"rank{rank}.torch_cpu"])
        dev = torch.device(device)
        if dev.type == "cuda" and f"rank{rank}.torch_cuda" in rng:
            torch.cuda.set_rng_state(rng[f"rank{rank}.torch_cuda"], dev)
        meta["rng_restored"] = True
    else:
        meta["rng_restored"] = False
    return meta
