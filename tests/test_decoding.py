import math

import pytest
import torch

from hvae.decoding import Decoding


def _logits(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def test_top_k_never_picks_outside_the_k_most_probable():
    torch.manual_seed(0)
    logits = torch.randn(64, 20, 3)  # classes along dim 1
    ids = Decoding("top_k", top_k=4, temperature=3.0).pick(logits.expand(50, -1, -1, -1).reshape(-1, 20, 3))
    top4 = logits.topk(4, dim=1).indices.repeat(50, 1, 1)  # (50*64, 4, 3)
    assert (ids.unsqueeze(1) == top4).any(1).all()


def test_greedy_is_the_argmax_and_deterministic():
    logits = torch.randn(32, 10)
    a, b = Decoding("greedy").pick(logits), Decoding("greedy", temperature=0.1).pick(logits)
    assert torch.equal(a, logits.argmax(1)) and torch.equal(a, b)


def test_sampling_at_temperature_one_matches_the_probabilities():
    torch.manual_seed(1)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 200_000
    ids = Decoding("sample").pick(torch.log(p).expand(n, 4))
    freq = torch.bincount(ids, minlength=4).double() / n
    # four standard errors of a binomial frequency
    assert (freq - p.double()).abs().max() < 4 * math.sqrt(0.25 / n)


def test_temperature_sharpens_and_flattens():
    torch.manual_seed(2)
    p = torch.tensor([0.7, 0.2, 0.1])
    n = 100_000
    cold = torch.bincount(Decoding(temperature=0.5).pick(torch.log(p).expand(n, 3)), minlength=3).double() / n
    want = p.double() ** 2 / (p.double() ** 2).sum()  # p^(1/T), renormalised
    assert (cold - want).abs().max() < 0.01


def test_top_p_keeps_the_smallest_set_holding_p():
    logits = _logits([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(Decoding("top_p", top_p=0.75).warp(logits))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75 <= 0.8
    kept = torch.isfinite(Decoding("top_p", top_p=0.79).warp(logits))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(Decoding("top_p", top_p=0.81).warp(logits))
    assert kept.tolist() == [[True, True, True, False]]
    kept = torch.isfinite(Decoding("top_p", top_p=0.01).warp(logits))  # the most probable always stays
    assert kept.tolist() == [[True, False, False, False]]


def test_top_p_works_along_any_axis_and_unsorted():
    logits = _logits([[0.05, 0.5], [0.15, 0.3], [0.3, 0.15], [0.5, 0.05]])  # classes along dim 0
    kept = torch.isfinite(Decoding("top_p", top_p=0.75).warp(logits, dim=0))
    assert kept[:, 0].tolist() == [False, False, True, True]
    assert kept[:, 1].tolist() == [True, True, False, False]


def test_binary_values_follow_the_logits():
    torch.manual_seed(3)
    logits = torch.full((100_000,), math.log(0.2 / 0.8))
    x = Decoding().pick_binary(logits)
    assert x.dtype == logits.dtype and set(x.unique().tolist()) <= {0.0, 1.0}
    assert abs(x.mean().item() - 0.2) < 0.01
    assert Decoding("greedy").pick_binary(torch.tensor([-1.0, 2.0])).tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="beam"), "decode must be one of"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Decoding(**kwargs)
