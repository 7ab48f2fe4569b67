"""Lossless compression with a trained hierarchy: bits-back ANS (``hvae compress`` / ``hvae decompress``).

    from hvae import codec
    data = codec.compress(model, x)           # x (N, *data_shape) in the likelihood's support -> bytes
    x_back = codec.decompress(model, data)    # -> (N, *data_shape) float32, equal to x
    codec.info(data)                          # the header, with total and net bits

:mod:`hvae.codec.coding` holds the bits-back recursion, :mod:`hvae.codec.container` the file format,
:mod:`hvae.codec.runs` the two commands.

The chain starts on ``init_words`` random 32-bit words (seeded: the same input gives the same bytes) that
the first batch's posterior draws take bits from; the file carries them, the decoder ends with exactly
them (a check), and :func:`info` reports the rate with them (``total_bits``) and without (``net_bits``).
Batches grow from one example as the stack fills, so that every batch finds the bits it takes back; the
file lists their sizes, and the decoder runs the same batches.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from torch import Tensor

from .. import inputs
from . import coding, container
from .coding import CorruptError
from .container import FormatError, model_id

__all__ = ["compress", "decompress", "info", "CorruptError", "FormatError", "model_id"]

#: bits a batch's pops must leave on the stack: the coder's 64-bit state and one word in reserve
_RESERVE = 96
_SEED = 0x68766165


def _init_words(n: int) -> np.ndarray:
    # nonzero words: the top word of an ANS stack must be nonzero
    return np.random.default_rng(_SEED).integers(1, 2**32, size=n, dtype=np.uint32)


def _pop_budget(model, codes) -> float:
    """An upper estimate of the bits one example's posterior pops take: log2 K per symbol, 1.5x."""
    bits = 0.0
    for layer, code in zip(model.layers, codes):
        if code.kind == "vq":
            continue
        n = math.prod(layer.latent_shape)
        if code.kind == "categorical":
            n //= code.K
        bits += n * math.log2(code.K)
    return 1.5 * bits + 64


def compress(model, x: Tensor, *, latent_bits: int = 10, batch_size: int = 64) -> bytes:
    """Code ``x`` (N, *data_shape), values in the model's likelihood support (binary for Bernoulli, the
    levels k / (K - 1) for categorical and discretised logistic models, or integer levels), losslessly.
    Token models (text): int64 ids (N, T' <= T); each row is coded up to and including its first
    end-of-sequence (or padding) id, and everything after it must be padding (it decodes as padding).

    ``latent_bits``: each Gaussian latent is coded as one of 2^latent_bits buckets (more: closer to the
    ELBO, slower). ``batch_size``: the most examples coded together. Runs on the CPU, with one thread
    (:func:`hvae.codec.coding.deterministic`). Returns the bytes of the file format of
    :mod:`hvae.codec.container`."""
    if model.config.decoder_only:
        raise ValueError(
            "hvae.codec codes with bits-back through the latents; this model is decoder-only (model.decoder_only: "
            "true) and has none: compress with a model that has latent levels"
        )
    if not 1 <= latent_bits <= 16:
        raise ValueError(f"latent_bits must be in 1..16, got {latent_bits}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    levels = coding.data_levels(model)
    model = _on_cpu(model)
    x = x.cpu()
    inputs.check_batch(model, x, values=True)
    stops = coding.token_stops(model)
    if stops is not None and x.shape[1] < model.data_shape[0]:  # token rows that stop early: pad them out
        x = torch.nn.functional.pad(x, (0, model.data_shape[0] - x.shape[1]), value=stops[1])
    s_all = coding.to_symbols(model, x)
    coding.check_rows(model, s_all)
    xc = coding.from_symbols(model, s_all)  # the values the decoder will see, to the bit
    codes = coding.level_codes(model, latent_bits)
    budget = _pop_budget(model, codes)
    N = x.shape[0]
    words = math.ceil((budget + _RESERVE) / 32) + 1
    with coding.deterministic(), _eval(model):
        while True:
            result = _encode_all(model, codes, xc, s_all, words, budget, batch_size)
            if result is not None:
                break
            words *= 2  # the first example took more bits back than the estimate: start on more
    coder, sizes = result
    payload = coder.words().astype("<u4").tobytes()
    header = {
        "model": model_id(model),
        "data_shape": list(model.data_shape),
        "count": N,
        "levels": levels,
        "latent_bits": latent_bits,
        "prob_bits": coding.PROB_BITS,
        "coder": "constriction.stream.stack.AnsCoder, Categorical(perfect=False)",
        "threads": 1,
        "batches": sizes,
        "init_words": words,
        "init_seed": _SEED,
        "data_sha256": _digest(s_all),
        "torch": torch.__version__,
    }
    return container.pack(header, payload)


def _encode_all(model, codes, xc, s_all, words, budget, batch_size):
    N = xc.shape[0]
    coder = coding.Coder(_init_words(words))
    sizes, i = [], 0
    while i < N:
        b = int(max(1, min(batch_size, N - i, (coder.num_bits() - _RESERVE) // budget)))
        while True:
            saved = coder.clone()
            # a fresh (aligned) copy, as the decoder's: a kernel may round differently on a view at an offset
            low = coding.encode_batch(model, coder, codes, xc[i : i + b].clone(), s_all[i : i + b])
            if low >= _RESERVE:
                break
            coder = saved
            if b == 1:
                return None
            b //= 2
        sizes.append(b)
        i += b
    return coder, sizes


def decompress(model, data: bytes) -> Tensor:
    """The data coded by :func:`compress` with this ``model``: (N, *data_shape) float32 in [0, 1], equal
    to the input (token models: int64 ids (N, T), rows padded to T). A file from another model, a damaged
    or truncated file, or one from a newer hvae raises ``FormatError`` / ``CorruptError`` (a ``ValueError``)
    and never returns wrong data."""
    header, payload = container.unpack(data)
    model = _on_cpu(model)
    if header["model"] != model_id(model):
        raise FormatError(
            "the file was compressed with another model (its model hash differs from this model's); "
            "decompress it with the run that compressed it"
        )
    coding.data_levels(model)
    codes = coding.level_codes(model, header["latent_bits"])
    sizes = header["batches"]
    coder = coding.Coder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    out = []
    with coding.deterministic(), _eval(model):
        for b in reversed(sizes):
            try:
                out.append(coding.decode_batch(model, coder, codes, b))
            except (RuntimeError, ValueError, IndexError) as e:
                if isinstance(e, CorruptError):
                    raise
                raise CorruptError(f"the file does not decode with this model ({e})") from None
    s_all = torch.cat(out[::-1]) if out else torch.zeros(0, *model.data_shape, dtype=torch.long)
    if not np.array_equal(coder.words(), _init_words(header["init_words"])) or _digest(s_all) != header["data_sha256"]:
        raise CorruptError(
            "the decoded data do not match the file's checksum: it was coded on a machine or library version "
            "whose floating-point results differ from this one's (see README: what is guaranteed)"
        )
    return coding.from_symbols(model, s_all)


def info(data: bytes) -> dict:
    """The header of a compressed file, with ``total_bits`` (the whole file), ``init_bits`` (the random
    words the chain started on) and ``net_bits`` (the payload less those)."""
    header, payload = container.unpack(data)
    out = dict(header)
    out["total_bits"] = 8 * len(data)
    out["init_bits"] = 32 * header["init_words"]
    out["net_bits"] = 8 * len(payload) - out["init_bits"]
    return out


def _digest(s: Tensor) -> str:
    return hashlib.sha256(s.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()


def _on_cpu(model):
    p = next(model.parameters(), None)
    if p is not None and p.device.type != "cpu":
        raise ValueError("hvae.codec codes on the CPU; load the model with map_location='cpu'")
    return model


class _eval:
    """The model in eval mode while coding (batch norm's running statistics, hard discrete samples)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was)
