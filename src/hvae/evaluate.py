"""The evaluation job: ELBO, importance-weighted bound, bits/dim, KL and active units per layer.

Protocol (ARCHITECTURE.md): every number names its bound (ELBO, or IW with its K), its split and the split's
size; nats per example, and bits per dimension = -bound / (D ln 2). For dequantized data the bound on
the discrete data subtracts the dequantization's log-Jacobian D log(levels).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .data.text import row_lengths
from .decoding import Decoding
from .model import HierarchicalVAE
from .quantize import perplexity


@torch.no_grad()
def elbo_terms(model: HierarchicalVAE, x: torch.Tensor, batch_size: int = 100) -> dict[str, Any]:
    """Per-example ELBO, reconstruction term and per-layer KL over ``x`` (N, *data_shape), in eval mode."""
    was_training = model.training
    model.eval()
    elbos: list[torch.Tensor] = []  # per batch (B,)
    log_pxs: list[torch.Tensor] = []  # (B,)
    kls: list[torch.Tensor] = []  # (B, L)
    order, xs = _by_length(model, x)
    for xb in xs.split(batch_size):
        out = model(model.trim_padding(xb), beta=1.0)
        elbos.append(out.elbo)
        log_pxs.append(out.log_px)
        kls.append(torch.stack(out.kl, 1) if out.kl else out.elbo.new_zeros(out.elbo.shape[0], 0))  # none: decoder-only
    model.train(was_training)
    elbo, log_px, kl = (_unsort(torch.cat(t), order) for t in (elbos, log_pxs, kls))
    return {"elbo": elbo, "log_px": log_px, "kl": list(kl.unbind(1))}


def _by_length(model: HierarchicalVAE, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Token rows sorted by their length (padding excluded), so that each batch, trimmed of the padding all its
    rows share (``model.trim_padding``), costs the tokens it holds; the numbers are those of the unsorted,
    untrimmed rows. Other data: (None, x)."""
    if not model.reads_tokens or model.config.pad_id is None or x.shape[0] == 0:
        return None, x
    order = torch.argsort(row_lengths(x, model.config.pad_id), stable=True)
    return order, x[order]


def _unsort(t: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    if order is None:
        return t
    out = torch.empty_like(t)
    out[order] = t
    return out


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
def evaluation_sums(
    model: HierarchicalVAE,
    x: torch.Tensor,
    *,
    num_samples: int = 1000,
    chunk_size: int | None = None,
    batch_size: int = 100,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Sums over the examples of ``x`` (N, *data_shape), float64: count, per-example bounds and their
    squares, KL per layer, posterior means per unit and their squares. Sums of shards add up to the sums
    of the whole, so ranks evaluate disjoint shards and one all-reduce gives the exact totals. A decoder-only
    model (``config.decoder_only``) has no latents: its ELBO is log p(x) exactly, which stands for the IW bound
    (no K passes), and it has no KL or posterior means."""
    model.eval()

    def zeros(*size: int) -> torch.Tensor:
        return torch.zeros(*size, dtype=torch.float64, device=x.device)

    units = [math.prod(layer.latent_shape) for layer in model.layers]
    sums = {
        "n": torch.tensor([float(x.shape[0])], dtype=torch.float64, device=x.device),
        "elbo": zeros(2),  # sum, sum of squares
        "iw": zeros(2),
        "log_px": zeros(1),
        "kl": zeros(len(units)),
        "mean_z": zeros(sum(units)),
        "mean_z_sq": zeros(sum(units)),
    }
    vq_levels = _vq_levels(model)
    if vq_levels:  # how often each code of each vector-quantised level is chosen (posterior-mean path)
        sums["code_counts"] = zeros(len(vq_levels), model.config.vq.codes)
    if x.shape[0] == 0:  # a rank with no examples still takes part in the reduction
        return sums
    terms = elbo_terms(model, x, batch_size)
    elbo = terms["elbo"].double()
    sums["elbo"] += torch.stack([elbo.sum(), (elbo**2).sum()])
    sums["log_px"] += terms["log_px"].double().sum()
    if terms["kl"]:
        sums["kl"] += torch.stack([k.double().sum() for k in terms["kl"]])
    if model.config.decoder_only:
        sums["iw"] += sums["elbo"]
        return sums
    iws: list[torch.Tensor] = []  # per batch (B,)
    batches = [model.trim_padding(xb) for xb in _by_length(model, x)[1].split(batch_size)]  # the sums ignore order
    todo = len(batches)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"IW bound (K={num_samples})", leave=False)
    first: list[float] = []  # the first bound's seconds, eager: what each of the others would take eagerly
    lazy, before = model.iw_compiler, model.iw_compiler.work_left
    lazy.work_left = lambda: first[0] * (todo - len(iws)) if first else None
    try:
        for xb in batches:
            start = time.perf_counter()
            iws.append(model.log_likelihood(xb, num_samples=num_samples, chunk_size=chunk_size))
            if not first:
                first.append(time.perf_counter() - start)
    finally:
        lazy.work_left = before
    iw = torch.cat(iws).double()
    sums["iw"] += torch.stack([iw.sum(), (iw**2).sum()])
    means = [torch.cat(m).flatten(1) for m in zip(*(model.encode(xb, sample=False) for xb in x.split(batch_size)))]
    m = torch.cat(means, 1).double()  # (N, total units)
    sums["mean_z"] += m.sum(0)
    sums["mean_z_sq"] += (m**2).sum(0)
    for i, l in enumerate(vq_levels):
        layer = model.layers[l]
        k = layer.family.code_indices(means[l].view(-1, *layer.latent_shape))  # (N, G, *spatial)
        if k is None:  # _vq_levels keeps the quantized families, which all have codes
            raise TypeError(f"level {l + 1}'s family is quantized but code_indices gave no codes")
        sums["code_counts"][i] += torch.bincount(k.flatten(), minlength=model.config.vq.codes).double()
    return sums


def _vq_levels(model: HierarchicalVAE) -> list[int]:
    return [l for l, layer in enumerate(model.layers) if layer.family.quantized]


def _codebook_perplexity(model: HierarchicalVAE, sums: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``codebook_perplexity``: per level (bottom to top; null for levels that are not vector-quantised)
    exp(entropy) of the code usage over the split, from 1 (one code) to K (uniform use)."""
    if "code_counts" not in sums:
        return {}
    out: list[float | None] = [None] * len(model.layers)
    for counts, l in zip(sums["code_counts"], _vq_levels(model)):
        out[l] = float(perplexity(counts))
    return {"codebook_perplexity": out}


def _mean_and_stderr(s: torch.Tensor, n: float) -> tuple[float, float]:
    mean = float(s[0]) / n
    if n <= 1:
        return mean, 0.0
    var = max(0.0, (float(s[1]) - n * mean**2) / (n - 1))
    return mean, math.sqrt(var / n)


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
    reduce: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    unit_counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """All evaluation numbers for ``x`` (N, *data_shape); nats per example unless named bits/dim.

    ``unit_counts``: for sequences, how many of each unit the whole split holds (``{"token": …, "byte": …}``, see
    :func:`hvae.data.text.token_counts`); adds ``bits_per_<unit>_elbo`` / ``_iw`` = -bound N / (count ln 2).

    ``log_jacobian``: nats per example subtracted from both bounds so that they speak of the data as read,
    before preprocessing: D ln(levels) for dequantized data (the bound of the discrete values), plus the sum
    of ln std over the dimensions for standardized data (the density of the values before standardizing).

    ``reduce`` sums :func:`evaluation_sums` over processes (under torchrun every rank passes its shard of
    the split and ``Context.all_sum_dict``); the numbers are then those of the whole split.
    """
    t0 = time.perf_counter()
    sums = evaluation_sums(
        model, x, num_samples=num_samples, chunk_size=chunk_size, batch_size=batch_size, progress=progress
    )
    if reduce is not None:
        sums = reduce(sums)
    n = float(sums["n"])
    elbo_mean, elbo_se = _mean_and_stderr(sums["elbo"], n)
    iw_mean, iw_se = _mean_and_stderr(sums["iw"], n)
    # active units (Burda et al. 2016): Cov_x(E_q[z_u]) > threshold, from the sums of means and squares
    mu = sums["mean_z"] / n
    var = (sums["mean_z_sq"] - n * mu**2) / (n - 1) if n > 1 else torch.zeros_like(mu)
    units = [math.prod(layer.latent_shape) for layer in model.layers]
    au = [int((v > threshold).sum()) for v in var.split(units)]
    kl = [float(k) / n for k in sums["kl"]]
    D = math.prod(model.data_shape)
    elbo = elbo_mean - log_jacobian
    iw_bound = iw_mean - log_jacobian
    # per dimension for fixed-size data; sequences stop early, so they are measured per unit (_per_unit)
    per_dim = (
        {}
        if unit_counts
        else {
            "bits_per_dim_elbo": -elbo / (D * math.log(2)),
            "bits_per_dim_iw": -iw_bound / (D * math.log(2)),
            "dims": D,
        }
    )
    exact = {"exact": True} if model.config.decoder_only else {}  # the IW bound is log p(x), from one pass
    return {
        "num_examples": int(n),
        "num_samples": 1 if exact else num_samples,
        **exact,
        "elbo": elbo,
        "elbo_stderr": elbo_se,
        "iw_bound": iw_bound,
        "iw_bound_stderr": iw_se,
        "log_px": float(sums["log_px"]) / n,
        "kl": kl,
        "kl_total": sum(kl),
        **per_dim,
        "log_jacobian": log_jacobian,
        "active_units": au,
        "units": units,
        **_codebook_perplexity(model, sums),
        **_per_unit(elbo, iw_bound, n, unit_counts),
        "seconds": round(time.perf_counter() - t0, 2),
    }


#: examples the latent-information measures read at most: each reconstruction is one decoder step per token
LATENT_INFO_EXAMPLES = 256
#: the longest input (tokens before end-of-sequence; bytes for the byte tokeniser) counted as a short entry
SHORT_ENTRY_TOKENS = 40
#: short entries kept as examples (input -> reconstructions) in eval.json
RECONSTRUCTION_EXAMPLES = 5
#: the sampled reconstruction: ancestral sampling from p(x | z) itself (decoder temperature 1, no truncation),
#: what the bound scores; greedy decoding falls into loops whatever z says
SAMPLED_RECONSTRUCTION = Decoding("sample", temperature=1.0)


@torch.no_grad()
def latent_information(
    model: HierarchicalVAE, x: torch.Tensor, eos_id: int, batch_size: int = 100, tokenizer=None
) -> dict[str, Any]:
    """What the latents of a token model tell its decoder, on ``x`` (N, T) int64 ids padded with ``pad_id``:

    * ``latent_nats``: the mean of log p(x | z ~ q(z | x)) - log p(x | z ~ p(z)) (one z each), nats per
      sequence: how much better the decoder predicts a sentence given its own latents than given anyone's.
      About 0 when the decoder ignores the latents (posterior collapse).
    * ``token_accuracy_q`` / ``token_accuracy_p``: teacher-forced next-token accuracy, the fraction of target
      positions (padding excluded, end-of-sequence included) whose most probable id under p(x_i | x_<i, z) is
      x_i, with z ~ q(z | x) and with z ~ p(z), from the same two passes as ``latent_nats``;
      ``token_accuracy_gain`` = q - p, what the latents add (0 when the decoder ignores them).
    * ``reconstruction_similarity`` (greedy) and ``reconstruction_similarity_sampled``
      (:data:`SAMPLED_RECONSTRUCTION`): the mean over examples of 1 - Levenshtein(x, x̂) / max(|x|, |x̂|) on the
      token ids up to end-of-sequence, x̂ decoded from p(x | z ~ q(z | x)) (1: every input rebuilt); the
      ``_short`` means over the ``short_entries`` inputs of at most :data:`SHORT_ENTRY_TOKENS` tokens (None if
      there are none), the first :data:`RECONSTRUCTION_EXAMPLES` of which go to ``reconstruction_examples``
      (text with ``tokenizer``, else ids).

    Model in eval mode; one z per example, so all are single-draw estimates."""
    from rapidfuzz.distance import Levenshtein

    def similarity(a: list[int], b: list[int]) -> float:
        return Levenshtein.normalized_similarity(a, b) if (a or b) else 1.0

    def show(ids: list[int]) -> str | list[int]:
        return tokenizer.decode(ids) if tokenizer is not None else ids

    model.eval()
    pad, sampling = model.config.pad_id, SAMPLED_RECONSTRUCTION
    gain, n, targets, right_q, right_p = 0.0, 0, 0, 0, 0
    sims = {"greedy": 0.0, "sampled": 0.0, "greedy_short": 0.0, "sampled_short": 0.0}
    short = 0
    examples: list[dict[str, Any]] = []  # the first short inputs with their reconstructions
    for lo in range(0, x.shape[0], batch_size):
        xb = model.trim_padding(x[lo : lo + batch_size])
        B, T = xb.shape
        run = model._infer(xb)
        # every position's p(x_i | x_<i, z), teacher-forced: one parallel pass for z ~ q and one for z ~ p
        d_q = model._decode_state(run.state, T).conditionals(xb)
        d_p = model._decode_state(model._top_down(B).state, T).conditionals(xb)
        gain += float((d_q.log_prob(xb) - d_p.log_prob(xb)).sum())
        target = xb != pad if pad is not None else torch.ones_like(xb, dtype=torch.bool)  # (B, T)
        targets += int(target.sum())
        right_q += int(((d_q.logits.argmax(1).view_as(xb) == xb) & target).sum())  # logits (B, K, 1, T)
        right_p += int(((d_p.logits.argmax(1).view_as(xb) == xb) & target).sum())
        # token ids over the full length (not cut at the batch's longest input), padded after end-of-sequence
        px_q = model._decode_state(run.state)
        greedy, sampled = px_q.mean.tolist(), px_q.decode(sampling).tolist()
        for a, g, s in zip(xb.tolist(), greedy, sampled):
            a, g, s = _until_eos(a, eos_id), _until_eos(g, eos_id), _until_eos(s, eos_id)
            sim_g, sim_s = similarity(a, g), similarity(a, s)
            sims["greedy"] += sim_g
            sims["sampled"] += sim_s
            if len(a) <= SHORT_ENTRY_TOKENS:
                short += 1
                sims["greedy_short"] += sim_g
                sims["sampled_short"] += sim_s
                if len(examples) < RECONSTRUCTION_EXAMPLES:
                    examples.append({"input": show(a), "sampled": show(s), "greedy": show(g)})
        n += B
    return {
        "latent_nats": gain / n,
        "token_accuracy_q": right_q / max(targets, 1),
        "token_accuracy_p": right_p / max(targets, 1),
        "token_accuracy_gain": (right_q - right_p) / max(targets, 1),
        "reconstruction_similarity": sims["greedy"] / n,
        "reconstruction_similarity_sampled": sims["sampled"] / n,
        "reconstruction_similarity_short": sims["greedy_short"] / short if short else None,
        "reconstruction_similarity_sampled_short": sims["sampled_short"] / short if short else None,
        "reconstruction_decoding": f"{sampling.method}, decoder temperature {sampling.temperature:g}",
        "short_entries": short,
        "short_entry_tokens": SHORT_ENTRY_TOKENS,
        "reconstruction_examples": examples,
        "latent_info_examples": n,
    }


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
    """The ids before end-of-sequence (and before padding, ``eos_id + 1``)."""
    for i, v in enumerate(ids):
        if v >= eos_id:
            return ids[:i]
    return ids


def _per_unit(elbo: float, iw_bound: float, n: float, units: dict[str, int] | None) -> dict[str, Any]:
    """Bits per token / byte / character of a sequence split (padding excluded from the counts; the bounds
    never include it, the end-of-sequence tokens are in both)."""
    if not units:
        return {}
    out: dict[str, Any] = {"nats_per_sequence_elbo": -elbo, "nats_per_sequence_iw": -iw_bound}
    out["unit_counts"] = dict(units)
    for unit, count in units.items():
        out[f"bits_per_{unit}_elbo"] = -elbo * n / (count * math.log(2))
        out[f"bits_per_{unit}_iw"] = -iw_bound * n / (count * math.log(2))
    return out


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of an evaluation result, stating bound, split and size. Sequences, whose rows stop
    early, are measured per token / byte / character instead of per dimension (padding would count)."""
    per_dim = not result.get("unit_counts")
    bpd_elbo = f"   {result['bits_per_dim_elbo']:.4f} bits/dim" if per_dim else ""
    bpd_iw = f"   {result['bits_per_dim_iw']:.4f} bits/dim" if per_dim else ""
    # a decoder-only model's bound is no estimate: the ELBO is log p(x), and so is the IW bound of any K
    iw_name = "exact log-likelihood" if result.get("exact") else f"IW bound (K={result['num_samples']})"
    lines = [
        (f"data: {result['data']}" if "data" in result else f"split: {result.get('split', '?')}")
        + f" ({result['num_examples']} examples"
        + (f", binarization: {result['binarize']}" if result.get("binarize", "none") != "none" else "")
        + ")",
        f"{'ELBO':<26}{result['elbo']:>12.3f} nats  ± {result['elbo_stderr']:.3f}{bpd_elbo}",
        f"{iw_name:<26}{result['iw_bound']:>12.3f} nats  ± {result['iw_bound_stderr']:.3f}{bpd_iw}",
        f"{'reconstruction log p(x|z)':<26}{result['log_px']:>12.3f} nats",
        *_unit_lines(result),
        f"{'KL total':<26}{result['kl_total']:>12.3f} nats",
        *_latent_lines(result),
        "",
    ]
    if result.get("exact"):
        lines.append("no latents (a decoder-only model): ELBO = IW bound = log p(x)")
    else:
        lines.append(f"{'layer':<8}{'KL (nats)':>12}{'active units':>16}")
    for i, (kl, au, u) in enumerate(zip(result["kl"], result["active_units"], result["units"])):
        lines.append(f"{'z_' + str(i + 1):<8}{kl:>12.3f}{f'{au} / {u}':>16}")
    for i, ppl in enumerate(result.get("codebook_perplexity") or []):
        if ppl is not None:
            lines.append(f"{'z_' + str(i + 1) + ' codebook perplexity':<26}{ppl:>12.2f}")
    return "\n".join(lines)


def _latent_lines(result: dict[str, Any]) -> list[str]:
    if "latent_nats" not in result:
        return []
    n = result["latent_info_examples"]
    return [
        f"{'latents tell the decoder':<26}{result['latent_nats']:>12.3f} nats  "
        f"(log p(x|z~q) - log p(x|z~p), {n} examples)",
        f"{'reconstruction similarity':<26}{result['reconstruction_similarity']:>12.3f}       "
        "(1 - token edit distance / length, greedy)",
        *_more_latent_lines(result),
    ]


def _more_latent_lines(result: dict[str, Any]) -> list[str]:
    """The teacher-forced accuracy and the sampled and short-entry similarities (eval.json files written before
    them have none)."""
    if "token_accuracy_q" not in result:
        return []
    lines = [
        f"{'next-token accuracy z~q':<26}{result['token_accuracy_q']:>12.3f}       "
        f"(teacher-forced; z~p {result['token_accuracy_p']:.3f}, the latents add {result['token_accuracy_gain']:+.3f})",
        f"{'reconstruction similarity':<26}{result['reconstruction_similarity_sampled']:>12.3f}       "
        f"({result['reconstruction_decoding']})",
    ]
    k, m = result["short_entries"], result["short_entry_tokens"]
    if k:
        lines.append(
            f"{'  short entries':<26}{result['reconstruction_similarity_sampled_short']:>12.3f}       "
            f"(sampled; greedy {result['reconstruction_similarity_short']:.3f}; {k} inputs of <= {m} tokens)"
        )
    else:
        lines.append(f"{'  short entries':<26}{'-':>12}       (no input of <= {m} tokens)")
    return lines


def _unit_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    iw = "(exact)" if result.get("exact") else "(IW)   "
    for unit, count in (result.get("unit_counts") or {}).items():
        lines.append(
            f"{'bits per ' + unit:<26}{result[f'bits_per_{unit}_iw']:>12.4f} {iw} "
            f"{result[f'bits_per_{unit}_elbo']:.4f} (ELBO)   over {count} {unit}s"
        )
    return lines


def write_result(run_dir: Path, result: dict[str, Any], data: str | Path | None = None) -> Path:
    """Write ``result`` to the run's ``eval.json`` (``eval-<stem>.json`` when scored on other ``data``)."""
    from .rundir import RunDir

    return RunDir(run_dir).write_eval(result, data)


def evaluate_run(
    run_dir: str | Path,
    cfg,
    model: HierarchicalVAE,
    *,
    split: str | None = None,
    data: str | Path | None = None,
    source: str | None = None,
    max_examples: int | None = None,
    num_samples: int | None = None,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    ctx=None,
    progress: bool = False,
) -> dict[str, Any]:
    """``hvae eval``: the numbers of :func:`evaluate` for a run's model on its own ``split`` (default
    ``cfg.eval.split``), or on other ``data`` (a file or folder, read by ``source``) preprocessed by the run's
    own rules (:func:`hvae.data.load_like`). The bounds speak of the data as read (the dequantization and
    standardization log-Jacobians subtracted); sequences are also measured per token and byte. Under torchrun
    (``ctx``) each rank scores a contiguous shard and the sums are all-reduced. Unset numbers come from
    ``cfg.eval``. The result names what was scored: ``split`` or ``data`` (and ``source``)."""
    from .data import dequantization_log_jacobian, load_dataset, load_like
    from .distributed import Context, eval_shard

    ctx = ctx or Context(device=next(model.parameters()).device)
    ec = cfg.eval
    dataset = load_dataset(cfg.data)  # the run's own data: its levels, training statistics and tokeniser
    tokenizer = None
    if dataset.tokenizer is not None:
        from .data.text import run_tokenizer

        tokenizer = run_tokenizer(run_dir, cfg.data)
    if data is not None:
        stats = None
        if cfg.data.standardize and dataset.mean is not None and dataset.std is not None:  # (set together)
            stats = (dataset.mean, dataset.std)
        x = load_like(cfg.data, data, source, tokenizer, data_shape=model.data_shape, train_stats=stats)
        where = {"data": str(data), **({"source": source} if source else {})}
    else:
        split = split or ec.split
        x = dataset.eval_tensor(split)
        where = {"split": split}
    limit = max_examples if max_examples is not None else ec.max_examples
    if limit:
        x = x[:limit]
    if x.shape[0] == 0:
        if data is not None:
            raise ValueError(f"{data} holds no examples")
        raise ValueError(f"the {split} split is empty; set data.val_fraction / data.test_fraction above 0")
    jac = 0.0  # the bounds of the data as read (see evaluate)
    if cfg.data.dequantize and dataset.levels and model.config.likelihood == "gaussian":
        jac += dequantization_log_jacobian(dataset.levels, x[0].numel())
    if cfg.data.standardize and dataset.std is not None:
        jac += float(dataset.std.double().log().sum())
    units = None
    if tokenizer is not None:  # sequences: bits per token and per byte / character
        from .data.text import token_counts

        units = token_counts(x, tokenizer)
    lo, hi = eval_shard(x.shape[0], ctx)
    result = evaluate(
        model,
        x[lo:hi].to(ctx.device),
        num_samples=num_samples if num_samples is not None else ec.num_samples,
        chunk_size=chunk_size if chunk_size is not None else ec.chunk_size,
        batch_size=batch_size if batch_size is not None else ec.batch_size,
        threshold=ec.active_unit_threshold,
        log_jacobian=jac,
        progress=progress,
        reduce=ctx.all_sum_dict,
        unit_counts=units,
    )
    if ctx.distributed:
        result["ranks"] = ctx.world_size
    result = {**where, "data_source": cfg.data.source, "binarize": cfg.data.binarize, **result}
    result["step"] = int(model.step)  # the training step of the model evaluated
    if units and tokenizer is not None:  # (units are counted for a tokeniser's rows only)
        result["tokenizer"] = cfg.data.tokenizer
        if hasattr(model.likelihood, "net"):  # an autoregressive decoder, which may ignore the latents
            # this process's shard only, at most LATENT_INFO_EXAMPLES (a greedy decoding per example)
            xs = x[lo:hi][:LATENT_INFO_EXAMPLES].to(ctx.device)
            result.update(latent_information(model, xs, tokenizer.eos_id, batch_size or ec.batch_size, tokenizer))
    return result
