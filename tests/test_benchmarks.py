"""The benchmark suite runs end to end in smoke mode, so it never rots (no timing is asserted)."""

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hvae
from benchmarks import harness, suites
from benchmarks.floor import (
    _packed_linear,
    as_written,
    floor_of_other,
    products_in_situ,
    record_products,
    time_products,
)
from benchmarks.harness import Contender, rng_state, train_interleaved, train_step
from benchmarks.run import keep_quality
from benchmarks.run import main as bench_main
from benchmarks.suites import quality, quality_model_name, run
from benchmarks.tables import quality_lines, quality_over_seeds, tables, write_results
from hvae.cli import main as hvae_main
from hvae.data import DataConfig, load_dataset

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_suite_smoke(tmp_path):
    res = run(smoke=True)
    assert res["roofline_gflops"] > 0
    names = [r["name"] for r in res["train"]]
    assert {"lvae_mnist", "lvae_mnist bottom_up", "plain yardstick"} <= set(names)
    for r in res["train"]:
        assert r["floor_ms"] > 0 and r["images_per_s"] > 0 and r["mflop_per_image"] > 0
    lvae = next(r for r in res["train"] if r["name"] == "lvae_mnist")
    assert math.isclose(lvae["mflop_per_image"], 12.2, rel_tol=0.25)  # the count for lvae_mnist
    assert all(r["ceiling"] > 0 and r["products_in_step_ms"] > 0 for r in res["train"])
    # the most any implementation reaches: the floor over the products in the step and the optimiser's step
    for r in res["train"]:
        assert r["optimizer_ms"] > 0
        assert r["reachable"] == pytest.approx(r["floor_ms"] / (r["products_in_step_ms"] + r["optimizer_ms"]))
    bf16 = next(r for r in res["train"] if r["name"] == "lvae_mnist bf16")
    assert bf16["precision"] == "bf16" and lvae["precision"] == "fp32" and res["roofline_bf16_gflops"] > 0
    assert res["iw"]["fraction_of_floor"] > 0 and res["iw"]["ceiling"] > 0
    # the floor as written (a mean map and a scale map per head): more, smaller products than hvae's
    yard = next(r for r in res["train"] if r["name"] == "plain yardstick")
    assert yard["written_floor_ms"] is None  # written that way already: nothing to split
    # (its sign is not asserted: in smoke mode the products are timed for a millisecond, and the written
    # floor is hvae's plus a difference of two such timings)
    # VDVAE's posterior and prior are bottleneck blocks (vae.py DecBlock enc/prior), no separate Gaussian head
    blocks = {"vdvae_small"}
    assert all(r["written_floor_ms"] is not None for r in res["train"] if r is not yard and r["name"] not in blocks)
    assert all(r["written_floor_ms"] is None for r in res["train"] if r["name"] in blocks)
    assert all(
        r["fraction_of_written_floor"] is not None for r in res["train"] if r is not yard and r["name"] not in blocks
    )
    assert res["iw"]["written_floor_seconds"] is not None
    # the floor and the step timed in alternating rounds; the fraction is the median of the rounds' own
    for r in res["train"]:
        rounds = r["floor_and_step_ms_by_round"]
        assert len(rounds) == 3 and r["fraction_of_floor"] == pytest.approx(statistics.median(f / t for f, t in rounds))
        assert r["floor_ms"] == statistics.median(f for f, _ in rounds)
    rounds = res["iw"]["floor_and_call_seconds_by_round"]
    assert res["iw"]["fraction_of_floor"] == statistics.median(f / t for f, t in rounds)
    assert not any(k.startswith("_") for r in (*res["train"], res["iw"]) for k in r)  # kept out of the JSON
    # the hypervisor's share of the CPU time, per row (None where the clock ticks did not advance) and per run
    assert all(r["cpu_stolen"] is None or 0 <= r["cpu_stolen"] <= 1 for r in (*res["train"], res["iw"]))
    assert all(r["timings"] in (1, 2) for r in (*res["train"], res["iw"]))
    if harness.cpu_ticks() is not None:
        assert 0 <= res["machine"]["cpu_stolen"] <= 1
    json.dumps(res)
    assert [r["K"] for r in res["memory_vs_k"]] == [10] and res["memory_vs_k"][0]["extra_memory_mb"] >= 0
    paired = res["paired"]
    assert set(paired["step_ms"]) == {"lvae_mnist", "plain yardstick"}  # smoke: no compiled contender
    assert paired["speedup_vs_yardstick"]["plain yardstick"] == 1.0
    assert [r["model"] for r in res["quality"]] == ["lvae_mnist", "lvae_mnist bottom_up", "plain yardstick"]
    *hvae_rows, yard = res["quality"]
    assert "vs_yardstick" not in yard
    for r in hvae_rows:  # the paired difference: per image, on the same images, so its mean is the bounds'
        assert math.isclose(r["vs_yardstick"], r["iw_bound"] - yard["iw_bound"], abs_tol=1e-3)
        assert r["vs_yardstick_stderr"] > 0
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nnotes kept\n")
    write_results(res, path)
    text = path.read_text()
    assert "notes kept" in text and "fraction of floor" in text and tables(res) in text
    header = next(l for l in text.splitlines() if l.startswith("| model | batch |"))
    row = next(l for l in text.splitlines() if l.startswith("| lvae_mnist | "))
    assert header.endswith("| CPU stolen |") and header.count("|") == row.count("|")
    if res["machine"]["cpu_stolen"] is not None:
        assert f"Over the whole run: {res['machine']['cpu_stolen']:.0%}." in text
    # a bf16 row's fraction of roofline is of the bf16 roofline
    line = next(l for l in text.splitlines() if l.startswith("| lvae_mnist bf16 |"))
    assert f"| {bf16['gflops_per_s'] / res['roofline_bf16_gflops']:.0%} |" in line

    # a later run without --quality keeps these quality results, marked with when they were measured
    later = {k: v for k, v in res.items() if not k.startswith("quality")}
    keep_quality(later, res)
    assert later["quality"] == res["quality"] and res["machine"]["commit"] in later["quality_from"]
    assert f"Measured {later['quality_from']}" in tables(later)
    fresh = dict(res)
    keep_quality(fresh, {**res, "quality": ["older"]})  # a run that measured quality keeps its own
    assert fresh["quality"] == res["quality"] and "quality_from" not in fresh


def test_cpu_ticks_read_the_stolen_time_of_all_cpus():
    stat = "cpu  100 5 50 800 10 0 5 30 7 0\ncpu0 50 2 25 400 5 0 2 15 3 0\nintr 1 2\n"
    assert harness.cpu_ticks(stat) == (30, 1000)  # guest time (7) is inside user time already
    assert harness.cpu_ticks("cpu0 1 2 3 4 5 6 7 8\n") is None  # no line for all CPUs
    assert harness.cpu_ticks("cpu  1 2 3 4\n") is None  # a kernel without the steal field
    assert harness.stolen_share((30, 1000), (80, 2000)) == 0.05
    assert harness.stolen_share(None, (80, 2000)) is None
    assert harness.stolen_share((30, 1000), (30, 1000)) is None  # no tick between the readings


@pytest.mark.parametrize(
    "readings, timings, stolen",
    [
        ([(0, 0), (30, 100), (30, 100), (35, 200)], 2, 0.05),  # 30% stolen: timed again, the quieter kept
        ([(0, 0), (5, 100)], 1, 0.05),  # quiet enough at once
        ([(0, 0), (30, 100), (30, 100), (70, 200)], 2, 0.30),  # louder again: the first timing kept
        ([None, None], 1, None),  # the machine does not say
    ],
)
def test_a_row_timed_while_the_hypervisor_took_much_is_timed_once_more(monkeypatch, readings, timings, stolen):
    ticks = iter(readings)
    monkeypatch.setattr(harness, "cpu_ticks", lambda: next(ticks))
    calls = []
    timed = harness.floor_beside({}, lambda: calls.append(1), 0.003, packed=False)
    assert timed["timings"] == timings and next(ticks, "done") == "done"
    assert timed["stolen"] == pytest.approx(stolen) if stolen is not None else timed["stolen"] is None
    assert len(timed["rounds"]) == 3 and calls


def _product_flops(calls) -> dict[str, int]:
    """Multiply-adds of the recorded matrix products, and how many there are."""
    macs = sum(n * math.prod(p.args[-2][0]) * p.args[-1][0][-1] for p, n in calls.items())
    return {"macs": macs, "count": sum(calls.values())}


@pytest.mark.parametrize(
    "cfg",
    [
        hvae.presets.lvae_mnist().replace(hidden_dims=[64, 32, 32], latent_dims=[8, 4, 2]),
        hvae.presets.lvae_mnist().replace(inference="top_down", hidden_dims=[64, 32, 32], latent_dims=[8, 4, 2]),
    ],
    ids=["ladder", "top_down"],
)
def test_the_model_as_written_computes_the_same_with_each_head_split(cfg):
    torch.manual_seed(0)
    model = hvae.build_model(cfg)
    model.set_compile("never")
    twin, split = as_written(model)
    assert split == 2 * len(cfg.latent_dims) - 1  # a posterior head per level, a prior head below the top
    x = (torch.rand(16, 784) < 0.3).float()
    torch.manual_seed(1)
    loss = model(x).loss
    torch.manual_seed(1)
    twin_loss = twin(x).loss
    torch.testing.assert_close(twin_loss, loss, rtol=1e-5, atol=1e-4)
    loss.backward()
    twin_loss.backward()
    grads = {n: p.grad for n, p in twin.named_parameters()}
    head = model.layers[0].posterior_head.weight.grad
    torch.testing.assert_close(
        torch.cat([grads["layers.0.posterior_head.mean.weight"], grads["layers.0.posterior_head.scale.weight"]]),
        head,
        rtol=1e-4,
        atol=1e-5,
    )
    # the same arithmetic in one more product per split head, forward, grad-input and grad-weight
    torch.manual_seed(3)  # the same noise, so batch norm's running statistics stay the same in both
    ours = _product_flops(record_products(lambda: model(x).loss.backward()))
    torch.manual_seed(3)
    written = _product_flops(record_products(lambda: twin(x).loss.backward()))
    assert written["macs"] == ours["macs"] and written["count"] == ours["count"] + 3 * split
    torch.manual_seed(2)
    bound = model.eval().log_likelihood(x[:4], num_samples=20)
    torch.manual_seed(2)
    torch.testing.assert_close(twin.eval().log_likelihood(x[:4], num_samples=20), bound, rtol=1e-5, atol=1e-4)


def test_the_floor_of_other_products_times_only_where_they_differ():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    shared = record_products(lambda: a @ b)
    assert floor_of_other(0.5, shared, shared) == 0.5  # nothing differs: nothing is timed
    more = record_products(lambda: (a @ b, a @ b, torch.randn(256, 256) @ torch.randn(256, 256)))
    # the second a @ b and the larger product are what ``more`` adds; nothing is only in ``shared``
    assert floor_of_other(0.0, shared, more, min_run_time=0.001, rounds=1) > 0
    assert floor_of_other(1.0, more, shared, min_run_time=0.001, rounds=1) < 1.0


def test_the_floor_of_other_products_counts_each_set_at_its_fastest_round(monkeypatch):
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    shared = record_products(lambda: a @ b)
    more = record_products(lambda: (a @ b, torch.randn(256, 256) @ torch.randn(256, 256)))
    # round after round, the products only ``more`` issues, then those only ``shared`` issues (none: 0 s):
    # the larger product takes 2 ms, and 100 ms in the three rounds a stalled CPU slowed
    times = iter([0.1, 0.0, 0.1, 0.0, 0.002, 0.0, 0.1, 0.0, 0.002, 0.0])
    monkeypatch.setattr("benchmarks.floor.time_products", lambda *args: (next(times), []))
    assert floor_of_other(0.5, shared, more) == pytest.approx(0.502)  # the median of the rounds: 0.6


@pytest.mark.skipif(not torch._C.has_mkl, reason="MKL's packed kernel is what is compared")
def test_the_evaluation_floor_counts_each_linear_map_at_its_faster_kernel():
    linear = torch.nn.Linear(32, 48)
    x = torch.randn(100, 32)
    calls = record_products(lambda: (linear(x), x @ linear.weight.t()))  # addmm and mm
    assert {str(p.op) for p in calls} == {"aten.addmm.default", "aten.mm.default"}
    for prod in calls:
        args = prod.materialise("cpu")
        stmt, env = _packed_linear(prod, args)
        # the packed kernel computes the same product as the recorded one
        torch.testing.assert_close(eval(stmt, env), prod.op(*args), rtol=1e-4, atol=1e-4)
    total, rows = time_products(calls, min_run_time=0.001, packed=True)
    assert all("packed_seconds" in r for r in rows)
    assert total == pytest.approx(sum(r["count"] * min(r["seconds"], r["packed_seconds"]) for r in rows))
    plain, rows = time_products(calls, min_run_time=0.001)
    assert not any("packed_seconds" in r for r in rows)
    conv = record_products(lambda: torch.nn.functional.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)))
    assert _packed_linear(next(iter(conv)), next(iter(conv)).materialise("cpu")) is None  # not a linear map


def test_the_model_as_written_splits_convolutional_heads():
    cfg = hvae.presets.get("conv_small")
    torch.manual_seed(0)
    model = hvae.build_model(cfg)
    twin, split = as_written(model)
    assert split == 2 * len(cfg.latent_dims) - 1
    assert isinstance(twin.layers[0].posterior_head.mean, torch.nn.Conv2d)
    x = (torch.rand(4, *cfg.data_shape) < 0.3).float()
    torch.manual_seed(1)
    loss = model(x).loss
    torch.manual_seed(1)
    torch.testing.assert_close(twin(x).loss, loss, rtol=1e-5, atol=1e-3)


def test_products_in_situ_counts_products_only():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    assert products_in_situ(lambda: (a + b).exp().sum(), repeats=3) == 0.0  # no product, nothing counted

    def step():
        t0 = time.perf_counter()
        a @ b, torch.addmm(a, a, b)
        return time.perf_counter() - t0

    wall = []
    inside = products_in_situ(lambda: wall.append(step()), repeats=4)
    assert len(wall) == 4 and 0.0 < inside <= sum(wall) / 4


def test_optimizer_seconds_times_the_optimizer_step_on_one_backward(monkeypatch):
    torch.manual_seed(0)
    model = hvae.build_model(hvae.presets.small())
    opt = hvae.make_optimizer(model)
    x = torch.bernoulli(torch.full((8, 64), 0.3))
    calls = {"backward": 0, "step": 0}
    backward, step = harness.backward, opt.step

    def counted_backward(*args):
        calls["backward"] += 1
        backward(*args)

    def counted_step():
        assert all(p.grad is not None for p in model.parameters())  # the gradients of that one backward
        calls["step"] += 1
        step()

    monkeypatch.setattr(harness, "backward", counted_backward)
    monkeypatch.setattr(opt, "step", counted_step)
    before = [p.detach().clone() for p in model.parameters()]
    assert harness.optimizer_seconds(model, opt, x, False, False, 0.01) > 0
    assert calls["backward"] == 1 and calls["step"] >= 3 + 3  # three warm-up calls, at least three timed
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # real steps were taken


def test_quality_over_seeds():
    # the summary's mean and standard error over seeds, closed form: differences +1 and +3 -> 2 ± stdev/sqrt(2) = 1
    rows = [
        {"model": "a", "seed": 0, "steps": 10, "iw_bound": -90.0, "vs_yardstick": 1.0},
        {"model": "y", "seed": 0, "steps": 8, "iw_bound": -91.0},
        {"model": "a", "seed": 1, "steps": 12, "iw_bound": -88.0, "vs_yardstick": 3.0},
        {"model": "y", "seed": 1, "steps": 6, "iw_bound": -91.0},
    ]
    a, y = quality_over_seeds(rows)
    assert a["seeds"] == [0, 1] and a["steps"] == 11 and a["iw_bound"] == -89.0
    assert a["vs_yardstick"] == 2.0 and math.isclose(a["vs_yardstick_stderr_seeds"], 1.0)
    assert a["vs_yardstick_per_seed"] == [1.0, 3.0] and "vs_yardstick" not in y and y["steps"] == 7
    # a model trained from fewer seeds (rows joined from another run) is summarised over its own, no error
    for r in rows:
        r.update(epochs=1.0, iw_stderr=0.1, vs_yardstick_stderr=0.1, K=5, test_examples=20)
    twin = {**rows[0], "model": "t", "vs_yardstick": 0.5}
    assert "vs_yardstick_stderr_seeds" not in quality_over_seeds([*rows, twin])[2]
    text = "\n".join(quality_lines({"quality": [*rows, twin], "quality_budget_s": 60.0}))
    assert "| a | 0, 1 | 11 | -89.00 | +2.00 ± 1.00 | +1.00, +3.00 |" in text
    assert "| t | 0 | 10 | -90.00 | +0.50 | +0.50 |" in text


def test_quality_trains_every_model_from_every_seed():
    data = {"source": "digits", "flatten": True, "binarize": "dynamic"}
    rows = quality(0.2, 5, 20, data, models=("lvae_mnist", "plain yardstick"), seeds=(0, 1))
    assert [(r["model"], r["seed"]) for r in rows] == [
        ("lvae_mnist", 0),
        ("plain yardstick", 0),
        ("lvae_mnist", 1),
        ("plain yardstick", 1),
    ]
    assert rows[0]["iw_bound"] != rows[2]["iw_bound"]  # another seed, another initialisation
    for r in rows[::2]:  # each seed's difference is against the yardstick of the same seed
        yard = rows[rows.index(r) + 1]
        assert math.isclose(r["vs_yardstick"], r["iw_bound"] - yard["iw_bound"], abs_tol=1e-3)
    text = "\n".join(quality_lines({"quality": rows, "quality_budget_s": 0.2}))
    assert "Over seeds" in text and "| lvae_mnist | 1 |" in text and "| lvae_mnist | 0, 1 |" in text


def test_models_train_interleaved_each_for_its_own_budget():
    # a fake clock: a step of "a" takes 1 s, of "b" 2 s; a budget of 10 s each, in turns of 3 s
    now, calls, draws = [0.0], [], {"a": [], "b": []}

    def stepper(name, cost):
        def step():
            calls.append(name)
            now[0] += cost
            draws[name].append(torch.rand(1).item())

        return step

    resumed = []
    torch.manual_seed(0)
    start = rng_state()
    contenders = {
        "a": Contender(stepper("a", 1.0), resume=lambda: resumed.append("a"), rng=start),
        "b": Contender(stepper("b", 2.0), rng=start),
    }
    out = train_interleaved(contenders, budget_s=10.0, turn_s=3.0, clock=lambda: now[0])
    assert out == {"a": {"steps": 10, "train_s": 10.0}, "b": {"steps": 5, "train_s": 10.0}}
    # a turn ends with the step that reaches 3 s or the budget left: b's third turn has 2 s, a's fourth 1 s
    assert "".join(calls) == "aaabbaaabbaaaba"
    assert resumed == ["a"] * 4
    # each draws its own stream, whatever the turns: both started from one state, so b's is a's beginning
    torch.manual_seed(0)
    assert draws["a"] == torch.rand(10).tolist() and draws["b"] == draws["a"][:5]


def test_bf16_training_step_runs_its_products_in_bf16():
    torch.manual_seed(0)
    model = hvae.build_model(hvae.presets.small())
    opt = hvae.make_optimizer(model)
    x = torch.bernoulli(torch.full((8, 64), 0.3))
    for bf16, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        products = record_products(lambda b=bf16: train_step(model, opt, x, bf16=b))
        dtypes = {a[2] for p in products for a in p.args if isinstance(a, tuple) and len(a) == 3}
        assert dtypes == {dtype}, (bf16, dtypes)  # forward, grad-input and grad-weight products alike
    assert all(p.grad is None and p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32


def test_quality_trains_a_bf16_model_under_autocast(monkeypatch):
    seen = []

    def step(model, opt, x, plain=False, bf16=False):
        seen.append((type(model).__name__, bf16))
        train_step(model, opt, x, plain, bf16)

    monkeypatch.setattr(suites, "train_step", step)
    data = {"source": "digits", "flatten": True, "binarize": "dynamic"}
    rows = quality(0.2, 5, 20, data, models=("lvae_mnist bf16", "plain yardstick"), seeds=(0,))
    assert [r["model"] for r in rows] == ["lvae_mnist bf16", "plain yardstick"]
    assert set(seen) == {("HierarchicalVAE", True), ("PlainLVAE", False)}
    assert math.isclose(rows[0]["vs_yardstick"], rows[0]["iw_bound"] - rows[1]["iw_bound"], abs_tol=1e-3)


def test_quality_trains_a_model_at_its_own_batch_size(monkeypatch):
    seen = []

    def step(model, opt, x, plain=False, bf16=False):
        seen.append((type(model).__name__, bf16, len(x)))
        train_step(model, opt, x, plain, bf16)

    monkeypatch.setattr(suites, "train_step", step)
    data = {"source": "digits", "flatten": True, "binarize": "dynamic"}
    rows = quality(0.2, 5, 20, data, models=("lvae_mnist bf16 @24", "plain yardstick"), batch_size=16, seeds=(0,))
    assert [(r["model"], r["batch_size"]) for r in rows] == [("lvae_mnist bf16 @24", 24), ("plain yardstick", 16)]
    assert set(seen) == {("HierarchicalVAE", True, 24), ("PlainLVAE", False, 16)}
    ds = load_dataset(DataConfig.from_dict(data))
    assert rows[0]["epochs"] == round(rows[0]["steps"] / ds.num_batches("train", 24), 2)


def test_quality_model_names():
    assert quality_model_name("lvae_mnist", 256) == ("lvae_mnist", False, 256)
    assert quality_model_name("lvae_mnist bf16 @1024", 256) == ("lvae_mnist", True, 1024)
    assert quality_model_name("plain yardstick @64", 256) == ("plain yardstick", False, 64)
    for bad in ("lvae_mnist @", "lvae_mnist @0", "lvae_mnist @x2"):
        with pytest.raises(ValueError, match="positive integer"):
            quality_model_name(bad, 256)


def test_bench_refuses_an_unknown_quality_model(capsys):
    for bad, says in (("lvae_mnist @0", "positive integer"), ("lvae_mnst bf16", "unknown model 'lvae_mnst'")):
        with pytest.raises(SystemExit):
            bench_main(["--quality", "--no-write", "--models", "lvae_mnist", bad])
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_main(["--quality", "--no-write", "--test-examples", "0"])
    assert "--test-examples must be >= 1" in capsys.readouterr().err


def test_hvae_bench_runs_the_suite_of_the_checkout_it_is_called_in_without_sys_path():
    # a fresh process that imports hvae as an installed package does: the checkout is not on sys.path (its
    # working directory, first on it, is benchmarks/ itself) and PYTHONPATH names src/ only
    code = (
        "import json, sys\nfrom hvae.cli import main\n"
        "try:\n    main(['bench', '--seeds', '0'])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        "print(sys.modules['benchmarks.run'].__file__)\nprint(json.dumps(sys.path))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO / "benchmarks", env=env, capture_output=True, text=True, timeout=300
    )
    exit_line, module, path = done.stdout.splitlines()[-3:]
    # the suite's own argument check answered: its command line was found and run
    assert exit_line == "exit 2" and "--seeds must be >= 1, got 0" in done.stderr
    assert Path(module) == REPO / "benchmarks" / "run.py"
    assert str(REPO) not in json.loads(path)  # found from the working directory up, imported without sys.path


def test_hvae_bench_outside_a_checkout_says_where_the_suite_is(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert hvae_main(["bench", "--smoke"]) == 2
    err = capsys.readouterr().err
    assert f"no benchmarks/run.py in {tmp_path} or above it" in err
    assert "run hvae bench (or make bench) inside a clone of hvae's repository" in err
