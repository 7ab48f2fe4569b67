"""Compilation where it pays: the lazy, measured policy of hvae.compiled, and a real compiled training step."""

from __future__ import annotations

import pytest
import torch

import hvae
from hvae.compiled import LazyCompile


class FakeClock:
    """A clock the test advances: each call of a step function costs its ``cost`` seconds."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _policy(monkeypatch, eager_cost: float, compiled_cost: float, **kw):
    """A LazyCompile over fake step functions; ``clock.slow`` multiplies every step's cost (machine drift)."""
    clock, calls = FakeClock(), []
    clock.slow = 1.0

    def eager(x):
        calls.append("eager")
        clock.t += eager_cost * clock.slow
        return x

    def fake_compile(fn, **_):
        def compiled(x):
            calls.append("compiled")
            clock.t += compiled_cost * clock.slow
            return x

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    return LazyCompile(eager, clock=clock, **kw), calls


@pytest.mark.parametrize("compiled_cost, kept", [(0.5, True), (1.0, False)])
def test_auto_compiles_after_the_eager_budget_and_keeps_it_only_if_faster(monkeypatch, compiled_cost, kept):
    # early=10: the whole probe of 10 pairs (steady timings would settle it after 6: see the tests below)
    lazy, calls = _policy(
        monkeypatch, eager_cost=1.0, compiled_cost=compiled_cost, after_s=30, probe=10, skip=2, early=10
    )
    for _ in range(30):
        lazy(0)
    assert set(calls) == {"eager"}  # 29 s of timed eager steps: the first call has no interval before it
    lazy(0)
    assert calls[-1] == "compiled" and lazy.status == "probing"
    n = len(calls)
    for _ in range(2 * (2 + 10) - 2):  # the probe alternates: 2 warm-up and 10 timed compiled steps, eager between
        lazy(0)
    assert calls[n - 1 :] == ["compiled", "eager"] * (1 + 10) + ["compiled"]
    assert lazy.status == "probing"
    lazy(0)  # the last compiled step is timed: the verdict
    if kept:
        assert lazy.status == "compiled (2.00x faster)"
    else:
        assert lazy.status.startswith("eager (the compiled step was 1.00x")
    n = len(calls)
    for _ in range(3):
        lazy(0)
    assert calls[n:] == ["compiled" if kept else "eager"] * 3
    assert lazy.events[0] == "compiling (after 30 s of eager training steps)" and len(lazy.events) == 3


def test_the_probe_times_compiled_and_eager_steps_interleaved(monkeypatch):
    # the machine gets twice as slow just as the model compiles: against the eager steps before it, a 2x
    # faster compiled step would read 1.00x and be dropped; interleaved, both see the same machine
    lazy, calls = _policy(monkeypatch, eager_cost=1.0, compiled_cost=0.5, after_s=30, probe=10, skip=2)
    for _ in range(31):
        lazy(0)
    assert lazy.status == "probing"
    lazy.clock.slow = 2.0
    for _ in range(2 * (2 + 6)):
        lazy(0)
    assert lazy.status == "compiled (2.00x faster; the probe stopped after 6 pairs of steps, all agreeing)"


@pytest.mark.parametrize(
    "eager, compiled, verdict",
    [
        ([1.0] * 5, [0.5] * 5, None),  # fewer than early pairs: not yet
        ([1.0] * 6, [0.5] * 6, 2.0),  # six pairs, each 2x: compiled
        ([1.0] * 6, [1.0] * 6, 1.0),  # six pairs, none faster: eager (1.00 <= KEEP)
        ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5, 0.5, 1.2], None),  # one pair disagrees: go on
        ([1.0] * 6, [0.975] * 6, 1 / 0.975),  # 1.026x in every pair, not above KEEP: each pair says eager
        ([1.0] * 6, [0.5] * 5 + [0.99], None),  # 2x five times, 1.01x once: not unanimous
        ([1.0] * 7, [0.5, 0.5, 0.5, 0.5, 0.5, 1.2, 0.5], None),  # an early disagreement is never forgotten
        ([1.0] * 10, [0.5] * 9 + [1.2], 2.0),  # the whole probe: the median decides, the outlier does not
        ([1.0, 2.0] * 5, [0.9, 1.1] * 5, 1.5 / 1.0),  # whole probe of mixed pairs: medians 1.5 / 1.0
    ],
)
def test_probe_verdict_settles_early_only_when_every_pair_agrees(eager, compiled, verdict):
    from hvae.compiled import probe_verdict

    got = probe_verdict(eager, compiled, probe=10, early=6)
    assert got == (None if verdict is None else pytest.approx(verdict))


def test_a_probe_with_one_disagreeing_pair_runs_to_the_end(monkeypatch):
    # the fifth compiled step is slow (a pause of the machine): no early verdict, the 10 pairs' medians decide
    lazy, calls = _policy(monkeypatch, eager_cost=1.0, compiled_cost=0.5, after_s=30, probe=10, skip=2)
    for _ in range(31):
        lazy(0)
    compiled_steps = 0
    while lazy.status == "probing":
        lazy.clock.slow = 4.0 if calls[-1] == "eager" and compiled_steps == 2 + 4 else 1.0
        compiled_steps += calls[-1] == "eager"
        lazy(0)
    assert lazy.status == "compiled (2.00x faster)"
    assert calls.count("compiled") == 2 + 10 + 1  # warm-up, timed, and the first step after the verdict


def test_short_runs_never_compile_and_other_calls_restart_the_step_clock(monkeypatch):
    lazy, calls = _policy(monkeypatch, eager_cost=1.0, compiled_cost=0.5, after_s=10, probe=3)
    for _ in range(6):
        lazy(0)
        lazy.other_call()  # e.g. evaluation between steps: no interval is counted
    for _ in range(8):
        lazy(0)
    assert set(calls) == {"eager"} and lazy.status == "eager"
    never, calls = _policy(monkeypatch, eager_cost=100.0, compiled_cost=0.5, mode="never", after_s=0)
    for _ in range(30):
        never(0)
    assert set(calls) == {"eager"}


def test_a_failing_compile_goes_on_eagerly_and_undoes_the_call(monkeypatch):
    def broken(fn, **_):
        def compiled(*a):
            raise RuntimeError("no C++ compiler\ndetails")

        return compiled

    monkeypatch.setattr(torch, "compile", broken)
    undone = []
    lazy = LazyCompile(lambda x: x + 1, mode="always")
    assert lazy(1, snapshot=lambda: lambda: undone.append(True)) == 2
    assert undone == [True] and lazy.status == "eager (torch.compile failed: RuntimeError: no C++ compiler; " \
        "training steps run eagerly)"  # fmt: skip
    assert lazy(1) == 2 and lazy.compiled is None
    with pytest.raises(ValueError, match="auto, always"):
        LazyCompile(lambda x: x, mode="sometimes")


def test_model_training_calls_go_through_the_policy_and_evaluation_stays_eager(monkeypatch):
    model = hvae.build_model(hvae.presets.small())
    seen = []
    real = torch.compile

    def spy(fn, **kw):
        seen.append(fn)
        return real(fn, backend="eager")  # traced by dynamo, run without code generation: fast

    monkeypatch.setattr(torch, "compile", spy)
    model.set_compile("always")
    x = torch.bernoulli(torch.full((8, 64), 0.5))
    torch.manual_seed(0)
    out = model(x)
    assert seen and model.compiler.status == "compiled" and int(model.step) == 1
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        model(x)
    assert len(seen) == 1 and int(model.step) == 1


def test_a_bad_input_is_refused_before_the_compiler_and_does_not_count_as_a_failed_compile(monkeypatch):
    model = hvae.build_model(hvae.presets.small())
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="eager"))
    model.set_compile("always")
    with pytest.raises(ValueError, match=r"reshape it with x.reshape\(-1, 64\)"):
        model(torch.zeros(8, 8, 8))
    assert model.compiler.status == "eager" and int(model.step) == 0
    model(torch.bernoulli(torch.full((8, 64), 0.5)))
    assert model.compiler.status == "compiled" and int(model.step) == 1


def test_full_chunks_of_the_iw_bound_go_through_the_policy(monkeypatch):
    model = hvae.build_model(hvae.presets.small()).eval()
    twin = hvae.build_model(hvae.presets.small()).eval()
    twin.load_state_dict(model.state_dict())
    twin.set_compile("never")
    real, seen, chunks = torch.compile, [], []

    def spy(fn, **kw):
        seen.append(fn)
        compiled = real(fn, backend="eager")  # dynamo traces it; the same operations run: the same numbers

        def counted(self, ctxs, x_k, k):
            chunks.append(k)
            return compiled(self, ctxs, x_k, k)

        return counted

    monkeypatch.setattr(torch, "compile", spy)
    model.set_compile("always")
    x = torch.bernoulli(torch.full((8, 64), 0.5))
    # the last 6 eagerly; the last 11 as 12; the first compiled chunk twice (checked against the eager one first)
    for num_samples, ran in ((30, [12, 12, 12]), (35, [12, 12, 12])):
        chunks.clear()
        bounds = []
        for m in (model, twin):
            torch.manual_seed(0)
            bounds.append(m.log_likelihood(x, num_samples=num_samples, chunk_size=12))
        assert chunks == ran and model.iw_compiler.status == "compiled"
        assert twin.iw_compiler.status == "eager" and len(seen) == 1
        assert torch.allclose(*bounds, atol=1e-5)


def test_a_compiled_training_step_matches_the_eager_one():
    """A real torch.compile (inductor) of a small model with batch norm: the same loss, gradients and batch-norm
    running statistics as eager. The compiled step draws its noise from eager's generator (inductor's own random
    numbers are slow on a CPU), so the same seed gives the same noise."""
    torch.manual_seed(0)
    eager = hvae.build_model(hvae.presets.small(latent_dims=[4, 2], hidden_dims=[16, 8]))
    compiled = hvae.build_model(hvae.presets.small(latent_dims=[4, 2], hidden_dims=[16, 8]))
    compiled.load_state_dict(eager.state_dict())
    eager.set_compile("never")
    compiled.set_compile("always")
    x = torch.bernoulli(torch.full((16, 64), 0.5))
    for model in (eager, compiled):
        torch.manual_seed(1)
        model(x, beta=1.0).loss.backward()
    if compiled.compiler.status != "compiled":
        pytest.skip(f"torch.compile is not available here: {compiled.compiler.status}")
    losses = []
    for model in (eager, compiled):
        torch.manual_seed(2)
        losses.append(model(x, beta=1.0).loss)
    assert torch.allclose(*losses, rtol=1e-4, atol=1e-4)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-4), name
    for (name, a), b in zip(eager.named_buffers(), compiled.buffers()):  # two training calls counted alike
        assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6), name


def test_auto_skips_a_compile_that_the_steps_left_cannot_repay(monkeypatch):
    left = [100]
    lazy, calls = _policy(monkeypatch, eager_cost=1.0, compiled_cost=0.5, after_s=30, probe=3)
    lazy.steps_left = lambda: left[0]
    for _ in range(4):
        lazy(0)
        left[0] -= 1
    # three timed eager steps (the first call has no interval before it), 3 s of the 30: 97 steps of 1 s
    # left repay a compile, so it compiles at once
    assert calls == ["eager"] * 3 + ["compiled"]
    short, calls = _policy(monkeypatch, eager_cost=1.0, compiled_cost=0.5, after_s=10, probe=3)
    short.steps_left = lambda: 5  # 5 s of eager steps left < 10 s
    for _ in range(30):
        short(0)
    assert set(calls) == {"eager"} and short.status == "eager"


def test_auto_compiles_at_once_when_the_work_left_repays_it_and_never_when_it_cannot(monkeypatch):
    left = [None]
    lazy, calls = _policy(monkeypatch, eager_cost=1.0, compiled_cost=0.5, after_s=10, probe=3)
    lazy.work_left = lambda: left[0]
    lazy(0)
    lazy(0)
    assert set(calls) == {"eager"}  # not known yet, and far from 10 s of eager steps
    left[0] = 12.0
    lazy(0)
    assert calls[-1] == "compiled"  # 12 s of eager calls to come >= 10 s: at once
    short, calls = _policy(monkeypatch, eager_cost=1.0, compiled_cost=0.5, after_s=10, probe=3)
    short.work_left = lambda: 9.0
    for _ in range(30):  # 29 s of eager steps, past after_s: what is left decides
        short(0)
    assert set(calls) == {"eager"} and short.status == "eager"


def test_evaluation_compiles_the_bound_from_its_first_batch(monkeypatch):
    """``evaluate`` times its first bound and tells the IW policy what the others would take eagerly."""
    from hvae.evaluate import evaluate

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="eager"))
    x = torch.bernoulli(torch.full((12, 64), 0.5))
    for after_s, compiles in ((0.0, True), (1e6, False)):
        model = hvae.build_model(hvae.presets.small()).eval()
        model.set_compile("auto", after_s=after_s)
        seen, run = [], model.iw_compiler.fn

        def spy(self, *args, seen=seen, run=run):  # what the policy is told at each chunk
            seen.append(self.iw_compiler.work_left())
            return run(self, *args)

        model.iw_compiler.fn = spy
        evaluate(model, x, num_samples=4, chunk_size=2, batch_size=4)  # 3 bounds of 2 chunks: 6 < 20 eager steps
        assert any(e.startswith("compiling") for e in model.iw_compiler.events) == compiles
        assert seen[:2] == [None, None]  # the first bound is not timed yet
        if not compiles:
            assert len(seen) == 6 and seen[2] == 2 * seen[4] > 0  # two bounds left, then one
        assert model.iw_compiler.work_left is None  # the model's own policy again after the evaluation


def test_a_frozen_compile_is_dropped_when_its_weights_change(monkeypatch):
    """A graph compiled with frozen weights keeps the values it was compiled with: ``check_weights`` compares the
    weights with their copy, bit for bit, and drops the graph when any differs or is another tensor; the
    compile after that is unfrozen (its weights are inputs, valid whatever they become)."""
    w = torch.tensor([1.0, float("nan"), 1.0])
    lazy, calls = _policy(monkeypatch, eager_cost=1.0, compiled_cost=0.5, mode="always", freeze=lambda: [w])
    fake, how = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: how.append(kw) or fake(fn, **kw))
    compiles = lambda: sum(e.startswith("compiling") for e in lazy.events)  # noqa: E731
    lazy(0)
    assert how[-1].get("fullgraph") and lazy._frozen is not None  # frozen: one whole graph
    lazy.check_weights()  # a NaN equals itself bit for bit: nothing changed
    lazy(0)
    assert calls == ["compiled", "compiled"] and compiles() == 1 and lazy.status == "compiled"
    w.data[0] = 3.0  # through .data: no version counter sees it (nor one of fused Adam's steps)
    lazy.check_weights()
    assert lazy.compiled is None and lazy.status.startswith("eager (the weights changed since the compile")
    lazy(0)
    assert calls[-1] == "compiled" and compiles() == 2  # always: compiled again at the next call,
    assert lazy._frozen is None and not how[-1].get("fullgraph")  # unfrozen
    w.data[0] = 4.0
    lazy.check_weights()  # nothing frozen: the weights are the graph's inputs
    assert lazy.compiled is not None and compiles() == 2


def test_a_replaced_weight_drops_a_frozen_compile(monkeypatch):
    weights = [torch.ones(3)]
    lazy, calls = _policy(monkeypatch, eager_cost=1.0, compiled_cost=0.5, mode="always", freeze=lambda: weights)
    lazy(0)
    weights[0] = weights[0].clone()  # the same values in another tensor: the graph's constant is not it
    lazy.check_weights()
    assert lazy.compiled is None
    lazy(0)
    weights[0] = weights[0].to(torch.float64)
    lazy.check_weights()
    assert lazy.compiled is not None  # unfrozen since the first change


def test_after_its_weights_change_auto_runs_eagerly_until_the_budget_again(monkeypatch):
    w = torch.ones(3)
    kw = dict(after_s=10, probe=3, skip=1, freeze=lambda: [w])
    lazy, calls = _policy(monkeypatch, eager_cost=1.0, compiled_cost=0.5, **kw)
    for _ in range(11 + 2 * 4):
        lazy(0)
    assert lazy.status == "compiled (2.00x faster)"
    w.add_(1)
    lazy.check_weights()
    assert lazy.status == "eager (the weights changed since the compile; compiling again after 10 s, unfrozen)"
    n = len(calls)
    for _ in range(10):  # the interval before the first is not an eager chunk's: 9 s counted
        lazy(0)
    assert set(calls[n:]) == {"eager"}
    lazy(0)
    assert calls[-1] == "compiled" and lazy.status == "probing"


def test_weights_off_the_cpu_and_no_freeze_are_never_frozen(monkeypatch):
    for freeze in (None, lambda: [torch.empty(3, device="meta")]):
        lazy, calls = _policy(monkeypatch, eager_cost=1.0, compiled_cost=0.5, mode="always", freeze=freeze)
        lazy(0)
        assert lazy._frozen is None and lazy._freezing().__class__.__name__ == "nullcontext"
        lazy.check_weights()
        assert lazy.compiled is not None and calls == ["compiled"]


def test_a_frozen_compiled_iw_bound_follows_the_weights():
    """A real inductor compile with frozen weights (a CPU): the compiled chunks give the eager bound, and after a
    fused Adam step (which bumps no version counter) and a ``load_state_dict`` they give the new weights' bound,
    not the one the graph was compiled with (the compile after the step, unfrozen, must not find the frozen
    graph again)."""
    torch.manual_seed(0)
    model = hvae.build_model(hvae.presets.small(latent_dims=[4, 2], hidden_dims=[16, 8])).eval()
    twin = hvae.build_model(hvae.presets.small(latent_dims=[4, 2], hidden_dims=[16, 8])).eval()
    twin.load_state_dict(model.state_dict())
    model.set_compile("always")
    twin.set_compile("never")
    x = torch.bernoulli(torch.full((8, 64), 0.5))

    def bounds():
        out = []
        for m in (model, twin):
            torch.manual_seed(1)
            out.append(m.log_likelihood(x, num_samples=25, chunk_size=10))  # chunks 10 and 10 compiled, 5 eager
        return out

    first = bounds()
    if model.iw_compiler.status != "compiled":
        pytest.skip(f"torch.compile is not available here: {model.iw_compiler.status}")
    assert model.iw_compiler._frozen is not None and torch.allclose(*first, atol=1e-4)
    for m in (model, twin):  # one training step of each, the same
        m.train()
        opt = hvae.make_optimizer(m, lr=1e-2)
        torch.manual_seed(2)
        m(x).loss.backward()
        opt.step()
        m.eval()
    stepped = bounds()
    assert torch.allclose(*stepped, atol=1e-4) and not torch.allclose(stepped[0], first[0], atol=1e-2)
    assert model.iw_compiler._frozen is None  # compiled again, unfrozen: the weights are its inputs
    other = hvae.build_model(hvae.presets.small(latent_dims=[4, 2], hidden_dims=[16, 8])).state_dict()
    model.load_state_dict(other)
    twin.load_state_dict(other)
    assert torch.allclose(*bounds(), atol=1e-4)
    assert sum(e.startswith("compiling") for e in model.iw_compiler.events) == 2


def test_a_compiled_convolutional_iw_bound_draws_the_eager_noise():
    """Inductor lays a convolutional model's tensors out channels-last; noise drawn ``like`` such a tensor would
    fill it in memory order and give another sample than eager for the same seed (5 nats apart here, before
    the noise was drawn in the elements' logical order). Compiled with frozen weights, the bound is eager's."""
    cfg = hvae.presets.conv_small()
    torch.manual_seed(0)
    model = hvae.build_model(cfg).eval()
    twin = hvae.build_model(cfg).eval()
    twin.load_state_dict(model.state_dict())
    model.set_compile("always")
    twin.set_compile("never")
    x = torch.bernoulli(torch.full((4, *cfg.data_shape), 0.3))
    bounds = []
    for m in (model, twin):
        torch.manual_seed(1)
        bounds.append(m.log_likelihood(x, num_samples=40, chunk_size=16))
    if model.iw_compiler.status != "compiled":
        pytest.skip(f"torch.compile is not available here: {model.iw_compiler.status}")
    assert model.iw_compiler._frozen is not None
    torch.testing.assert_close(*bounds, rtol=1e-5, atol=1e-3)


# ------------------------------------------------------------------------------------ the compile cache


@pytest.fixture
def cache_state(monkeypatch):
    """Leaves hvae's and torch's cache settings (and the cache folder variable) as they were."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    from hvae import compiled

    saved = (dict(compiled._cache), inductor_config.fx_graph_cache, functorch_config.enable_autograd_cache)
    monkeypatch.delenv(compiled.CACHE_ENV, raising=False)  # restored (or removed) after the test
    yield inductor_config, functorch_config
    compiled._cache.clear()
    compiled._cache.update(saved[0])
    inductor_config.fx_graph_cache, functorch_config.enable_autograd_cache = saved[1], saved[2]


def test_the_compile_cache_lives_under_the_users_cache_unless_inductors_variable_says_where(monkeypatch, tmp_path):
    from hvae.compiled import CACHE_ENV, default_cache_dir

    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "hvae" / "inductor"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "hvae" / "inductor"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_a_compile_turns_the_cache_on_in_its_folder_or_off(monkeypatch, tmp_path, cache_state):
    import os

    from hvae.compiled import CACHE_ENV, compile_cache

    inductor_config, functorch_config = cache_state
    seen = []
    lazy, _ = _policy(monkeypatch, eager_cost=1.0, compiled_cost=0.5, mode="always")
    monkeypatch.setattr(torch, "compile", lambda fn, **_: seen.append(os.environ.get(CACHE_ENV)) or fn)
    compile_cache(True, tmp_path / "c")
    assert os.environ.get(CACHE_ENV) is None  # nothing happens before a compile
    lazy(0)
    assert seen == [str((tmp_path / "c").resolve())] and (tmp_path / "c").is_dir()
    assert inductor_config.fx_graph_cache and functorch_config.enable_autograd_cache
    compile_cache(False)
    LazyCompile(lambda x: x, mode="always")(0)
    assert not inductor_config.fx_graph_cache and not functorch_config.enable_autograd_cache


def test_a_cache_folder_that_cannot_be_made_turns_the_cache_off_and_says_so(monkeypatch, tmp_path, cache_state):
    from hvae.compiled import compile_cache

    inductor_config, _ = cache_state
    (tmp_path / "file").write_text("in the way")
    lazy, calls = _policy(monkeypatch, eager_cost=1.0, compiled_cost=0.5, mode="always")
    compile_cache(True, tmp_path / "file" / "cache")
    lazy(0)
    assert calls == ["compiled"] and not inductor_config.fx_graph_cache
    assert lazy.events[0].startswith(f"compile cache off: cannot make {tmp_path / 'file' / 'cache'}")
    assert "TORCHINDUCTOR_CACHE_DIR" in lazy.events[0]


def test_a_second_compile_of_the_same_graph_loads_it_from_the_cache(tmp_path, cache_state):
    from torch._dynamo.utils import counters

    from hvae.compiled import _apply_cache, compile_cache

    compile_cache(True, tmp_path)
    _apply_cache()

    def f(x):
        return torch.sin(x) * 2 + 1

    x = torch.randn(8, requires_grad=True)
    hits = []
    for _ in range(2):
        torch._dynamo.reset()  # as a new process: dynamo traces again, inductor looks in the cache
        counters.clear()
        torch.compile(f)(x).sum().backward()
        hits.append(counters["inductor"]["fxgraph_cache_hit"] + counters["aot_autograd"]["autograd_cache_hit"])
    assert hits[0] == 0 and hits[1] >= 1 and any((tmp_path / "fxgraph").rglob("*"))


_BATCH = torch.bernoulli(torch.full((8, 64), 0.5), generator=torch.Generator().manual_seed(3))


def _one_eager_step(seed: int):
    """A small model's state, gradients and next random number after one eager training step from ``seed``."""
    torch.manual_seed(0)
    model = hvae.build_model(hvae.presets.small())
    model.set_compile("never")
    torch.manual_seed(seed)
    model(_BATCH, beta=1.0).loss.backward()
    return model, torch.rand(())


@pytest.mark.parametrize("miscompiled", [False, True])
def test_the_first_compiled_step_is_checked_against_the_eager_one(monkeypatch, miscompiled):
    """A compiled step whose gradients differ from eager ones (as inductor gave NVAE's cells on a CPU) is refused
    before it trains anything, and says why; a faithful one is kept. Either way the check leaves no trace: one
    step counted, the same batch-norm statistics, gradients and random numbers as an eager step."""
    reference, next_draw = _one_eager_step(seed=1)
    real = torch.compile

    def spy(fn, **kw):
        traced = real(fn, backend="eager")
        if not miscompiled:
            return traced

        def wrong(model, x, beta):  # the same loss, a gradient pushed into one weight
            out = traced(model, x, beta)
            w = next(model.parameters())
            out.loss = out.loss + 100.0 * (w - w.detach()).sum()
            return out

        return wrong

    monkeypatch.setattr(torch, "compile", spy)
    torch.manual_seed(0)
    model = hvae.build_model(hvae.presets.small())
    model.set_compile("always")
    torch.manual_seed(1)
    model(_BATCH, beta=1.0).loss.backward()
    if miscompiled:
        assert model.compiler.status.startswith("eager (the compiled call differs from the eager one: the gradient is")
        assert "a miscompilation by torch.compile: training steps run eagerly" in model.compiler.status
        assert model.compiler.compiled is None and model.compiler._done
    else:
        assert model.compiler.status == "compiled"
    assert torch.equal(torch.rand(()), next_draw)  # the step drew its noise as an eager one does
    for (name, a), b in zip(reference.named_buffers(), model.buffers()):
        assert torch.equal(a, b), name  # the step counter and batch-norm statistics moved once
    for (name, a), b in zip(reference.named_parameters(), model.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6), name  # the kept call is the eager step's


def test_gradient_mismatch_names_what_differs():
    from hvae.compiled import gradient_mismatch

    one, a, b = torch.tensor(1.0), torch.ones(4), torch.full((3,), 2.0)
    assert gradient_mismatch(["a", "b"], one, [a, b], one, [a * (1 + 1e-4), b]) is None
    assert gradient_mismatch(["a", "b", "c"], one, [a, b, None], one, [a, b, None]) is None
    off = gradient_mismatch(["a", "b"], one, [a, b], one, [a, torch.zeros(3)])
    assert off is not None and off.startswith("the gradient is 87% of its norm off (most in b 100% of its own")
    # a parameter with a large share of the norm wrong by more than half of its own: refused even if the total is
    # within 10%
    big = torch.ones(1000)
    off = gradient_mismatch(["big", "a"], one, [big, a], one, [big, 0.4 * a])
    assert off is not None and off.startswith("the gradient is 4% of its norm off (most in a 60% of its own")
    assert gradient_mismatch(["a"], one, [a], one, [None]) == "a gets a gradient in one of them only"
    assert gradient_mismatch(["a"], one, [a], torch.tensor(float("nan")), [a]).startswith("its loss is nan")
    assert gradient_mismatch(["a"], one, [a], torch.tensor(2.0), [a]).startswith("its loss is 2")
    # a non-finite eager step: nothing to compare (the trainer skips such updates)
    assert gradient_mismatch(["a"], torch.tensor(float("inf")), [a], one, [b]) is None


def test_a_compiled_iw_chunk_that_differs_from_the_eager_one_is_refused(monkeypatch):
    """The IW bound's first compiled chunk is checked against the eager one on the same noise: log-weights off
    by a nat are a miscompilation, and the bound is computed eagerly (the same as an eager twin's)."""
    from hvae.compiled import value_mismatch

    model = hvae.build_model(hvae.presets.small()).eval()
    twin = hvae.build_model(hvae.presets.small()).eval()
    twin.load_state_dict(model.state_dict())
    twin.set_compile("never")
    real = torch.compile

    def off_by_a_nat(fn, **kw):
        compiled = real(fn, backend="eager")
        return lambda self, ctxs, x_k, k: compiled(self, ctxs, x_k, k) + 1.0

    monkeypatch.setattr(torch, "compile", off_by_a_nat)
    model.set_compile("always")
    x = torch.bernoulli(torch.full((8, 64), 0.5))
    bounds = []
    for m in (model, twin):
        torch.manual_seed(0)
        bounds.append(m.log_likelihood(x, num_samples=24, chunk_size=12))
    assert model.iw_compiler.status.startswith(
        "eager (the compiled call differs from the eager one: its values are off"
    )
    assert model.iw_compiler.status.endswith("chunks of importance samples run eagerly)")
    assert torch.allclose(*bounds, atol=1e-5)
    a = torch.tensor([-300.0, float("-inf")])
    assert value_mismatch(a, a + 0.1) is None  # within 1e-2 + 1e-3 * 300
    assert value_mismatch(a, a + torch.tensor([0.5, 0.0])).startswith("its values are off by up to 0.5")
    assert value_mismatch(a, torch.tensor([float("nan"), 0.0])) == "its values are not finite where the eager ones are"
    assert value_mismatch(a, a[:1]).startswith("its values have shape (1,)")
