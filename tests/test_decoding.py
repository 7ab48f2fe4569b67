import math

import pytest
import torch

from hvae.decoding import GREEDY, SAMPLE, Decoding


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


# --- the sequential sampler of an autoregressive decoder, on a toy net whose logits we know ------------------

K, T = 5, 4  # ids 0..2 are words, 3 is end-of-sequence, 4 padding (the tokenisers' layout)
EOS, PAD = K - 2, K - 1


class _ToyNet(torch.nn.Module):
    """p(x_t | x_<t, c) = softmax(table[t] + c[:, 0, t] * e_EOS): the logits of each position are known, and
    a row's conditioning features say where it emits end-of-sequence. Counts the sampler's steps."""

    orders_channels = False

    def __init__(self, table):
        super().__init__()
        self.table, self.steps = table, 0

    def stepper(self, cond):
        net = self

        class _Stepper:
            def step(self, x, t):
                net.steps += 1
                logits = net.table[t].expand(cond.shape[0], K).clone()
                logits[:, EOS] += cond[:, 0, t]
                return logits

        return _Stepper()


def _toy(table, cond):
    from hvae.likelihoods import Autoregressive, Categorical

    base = Categorical((T,), num_classes=K, pad_id=PAD, tokens=True)
    return Autoregressive((T,), base, _ToyNet(table), cond_channels=1, levels=K)(cond)


def _table(seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(T, K, generator=g, dtype=torch.float64) * 2
    table[:, EOS:] = -50.0  # no end-of-sequence and no padding unless a row's features ask for it
    return table


def test_sequential_top_k_never_emits_a_token_outside_the_k_most_probable():
    table = _table()
    x = _toy(table, torch.zeros(4000, 1, T, dtype=torch.float64)).decode(Decoding("top_k", top_k=2))
    for t in range(T):
        allowed = set(table[t].topk(2).indices.tolist())
        assert set(x[:, t].tolist()) == allowed  # both are drawn, nothing else


def test_sequential_greedy_is_the_argmax_and_deterministic():
    table = _table(1)
    dist = _toy(table, torch.zeros(3, 1, T, dtype=torch.float64))
    x = dist.decode(GREEDY)
    assert torch.equal(x, table.argmax(1).expand(3, T))
    assert torch.equal(x, dist.decode(Decoding("greedy", temperature=0.1)))
    assert torch.equal(x, dist.mean)


def test_sequential_sampling_at_temperature_one_matches_p_x_given_z_in_frequency():
    table = _table(2)
    n = 20000
    torch.manual_seed(0)
    dist = _toy(table, torch.zeros(n, 1, T, dtype=torch.float64))
    x = dist.decode(SAMPLE)
    p = table.softmax(1)
    freq = torch.nn.functional.one_hot(x, K).double().mean(0)  # (T, K)
    assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / n)
    # the sampler's log-probability is that of p(x | z) itself
    assert torch.allclose(dist.sample_log_prob, p.log().gather(1, x.T).T.sum(1))


def test_end_of_sequence_stops_a_row_and_pads_the_rest():
    table = _table(3)
    cond = torch.zeros(4, 1, T, dtype=torch.float64)
    cond[:2, 0, 1] = 100.0  # rows 0 and 1 end at position 1
    dist = _toy(table, cond)
    x = dist.decode(SAMPLE)
    assert (x[:2, 1] == EOS).all() and (x[:2, 2:] == PAD).all()
    assert not (x[2:] >= EOS).any()
    lp = table.log_softmax(1)
    assert torch.allclose(
        dist.sample_log_prob[:2], lp[0, x[:2, 0]] + torch.log_softmax(table[1] + 100 * (torch.arange(K) == EOS), 0)[EOS]
    )
    # the loop ends when every row has ended
    cond[:, 0, 1] = 100.0
    dist = _toy(table, cond)
    dist._model.net.steps = 0
    x = dist.decode(Decoding("top_p", top_p=0.5))
    assert dist._model.net.steps == 2 and (x[:, 1] == EOS).all() and (x[:, 2:] == PAD).all()
