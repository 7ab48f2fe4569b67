"""The evaluation job: ELBO, importance-weighted bound, bits/dim, KL and active units per layer.

Protocol (DESIGN.md): every number names its bound (ELBO, or IW with its K), its split and the split's
size; nats per example, and bits per dimension = -bound / (D ln 2). For dequantized data the bound on
the discrete data subtracts the dequantization's log-Jacobian D log(levels).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from .model import HierarchicalVAE, _atomic_write_text


@torch.no_grad()
def elbo_terms(model: HierarchicalVAE, x: torch.Tensor, batch_size: int = 100) -> dict[str, Any]:
    """Per-example ELBO, reconstruction term and per-layer KL over ``x`` (N, *data_shape), in eval mode."""
    was_training = model.training
    model.eval()
    elbo, log_px, kls = [], [], []
    for xb in x.split(batch_size):
        out = model(xb, beta=1.0)
        elbo.append(out.elbo)
        log_px.append(out.log_px)
        kls.append(torch.stack(out.kl, 1))
    model.train(was_training)
    kl = torch.cat(kls)
    return {"elbo": torch.cat(elbo), "log_px": torch.cat(log_px), "kl": list(kl.unbind(1))}


@torch.no_grad()
def active_units(model: HierarchicalVAE, x: torch.Tensor, batch_size: int = 100, threshold: float = 0.01):
    """Active units per layer (Burda et al. 2016): unit u is active if Cov_x(E_q[z_u]) > ``threshold``.

    E_q[z_u] is read along the posterior-mean path (each level's q given the means of the levels above).
    Returns (active count per layer, units per layer, per-unit variances per layer).
    """
    model.eval()
    means = [torch.cat(m) for m in zip(*(model.encode(xb, sample=False) for xb in x.split(batch_size)))]
    variances = [m.flatten(1).var(0, unbiased=True) if m.shape[0] > 1 else torch.zeros(m[0].numel()) for m in means]
    return [int((v > threshold).sum()) for v in variances], [v.numel() for v in variances], variances


@torch.no_grad()
def evaluate(
    model: HierarchicalVAE,
    x: torch.Tensor,
    *,
    num_samples: int = 1000,
    chunk_size: int | None = None,
    batch_size: int = 100,
    threshold: float = 0.01,
    log_jacobian: float = 0.0,
    progress: bool = False,
) -> dict[str, Any]:
    """All evaluation numbers for ``x`` (N, *data_shape); nats per example unless named bits/dim."""
    model.eval()
    t0 = time.perf_counter()
    terms = elbo_terms(model, x, batch_size)
    iw = []
    batches = x.split(batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"IW bound (K={num_samples})", leave=False)
    for xb in batches:
        iw.append(model.log_likelihood(xb, num_samples=num_samples, chunk_size=chunk_size))
    iw = torch.cat(iw)
    au, units, _ = active_units(model, x, batch_size, threshold)
    D = math.prod(model.data_shape)
    elbo = terms["elbo"].mean().item() - log_jacobian
    iw_bound = iw.mean().item() - log_jacobian
    n = x.shape[0]
    return {
        "num_examples": n,
        "num_samples": num_samples,
        "elbo": elbo,
        "elbo_stderr": terms["elbo"].std().item() / math.sqrt(n) if n > 1 else 0.0,
        "iw_bound": iw_bound,
        "iw_bound_stderr": iw.std().item() / math.sqrt(n) if n > 1 else 0.0,
        "log_px": terms["log_px"].mean().item(),
        "kl": [k.mean().item() for k in terms["kl"]],
        "kl_total": sum(k.mean().item() for k in terms["kl"]),
        "bits_per_dim_elbo": -elbo / (D * math.log(2)),
        "bits_per_dim_iw": -iw_bound / (D * math.log(2)),
        "dims": D,
        "dequantization_log_jacobian": log_jacobian,
        "active_units": au,
        "units": units,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of an evaluation result, stating bound, split and size."""
    lines = [
        f"split: {result.get('split', '?')} ({result['num_examples']} examples"
        + (f", binarization: {result['binarize']}" if result.get("binarize", "none") != "none" else "")
        + ")",
        f"{'ELBO':<26}{result['elbo']:>12.3f} nats  ± {result['elbo_stderr']:.3f}   "
        f"{result['bits_per_dim_elbo']:.4f} bits/dim",
        f"{'IW bound (K=' + str(result['num_samples']) + ')':<26}{result['iw_bound']:>12.3f} nats  ± "
        f"{result['iw_bound_stderr']:.3f}   {result['bits_per_dim_iw']:.4f} bits/dim",
        f"{'reconstruction log p(x|z)':<26}{result['log_px']:>12.3f} nats",
        f"{'KL total':<26}{result['kl_total']:>12.3f} nats",
        "",
        f"{'layer':<8}{'KL (nats)':>12}{'active units':>16}",
    ]
    for i, (kl, au, u) in enumerate(zip(result["kl"], result["active_units"], result["units"])):
        lines.append(f"{'z_' + str(i + 1):<8}{kl:>12.3f}{f'{au} / {u}':>16}")
    return "\n".join(lines)


def write_result(run_dir: Path, result: dict[str, Any]) -> Path:
    path = Path(run_dir) / "eval.json"
    _atomic_write_text(path, json.dumps(result, indent=2))
    return path
