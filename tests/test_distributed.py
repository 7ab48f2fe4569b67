"""Many processes on the CPU (gloo): DDP equals one process, all-reduced skips, kills, N -> 1 resume,
exact sharded evaluation, bf16 autocast, and the GPU-path options that also run on a CPU."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import hvae
from hvae.checkpoint import latest_checkpoint
from hvae.config import ConfigError
from hvae.data import DataConfig, load_dataset, text
from hvae.distributed import Context, eval_shard, shard
from hvae.evaluate import elbo_terms, evaluate, evaluation_sums
from hvae.model import build_model
from hvae.optim import make_optimizer
from hvae.runconfig import load_run_config
from hvae.train import (
    TrainingDiverged,
    TrainingInterrupted,
    global_batch_size,
    learning_rate,
    resolve_config,
    train,
    train_step,
)
from tests.test_train import TINY as TRAIN_TINY

# no batch norm: gloo has no SyncBatchNorm, so per-rank batch statistics would differ from one process's
TINY = [*TRAIN_TINY, "model.batch_norm=false", "train.dist_timeout=30"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def tiny(*overrides):
    return load_run_config(None, TINY + list(overrides))


def torchrun(*args, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hvae"]
    return subprocess.Popen(cmd + list(args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def reference_run(overrides, world_size=2):
    """One process doing what N ranks do: rank r's rows of each global batch, its own noise stream (seeded
    seed + r), gradients averaged over the ranks, one optimizer step; on one thread, as each rank runs
    (``ENV``), so no sum is ordered differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reference_run(overrides, world_size)
    finally:
        torch.set_num_threads(threads)


def _reference_run(overrides, world_size):
    cfg, raw = tiny(*overrides)
    tc = cfg.train
    dataset = load_dataset(cfg.data)
    B = global_batch_size(tc, world_size)
    cfg = resolve_config(cfg, raw, dataset, B)
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model)
    streams = []
    for r in range(world_size):
        torch.manual_seed(tc.seed + r)
        streams.append(torch.get_rng_state())
    opt = make_optimizer(model, lr=tc.lr, name=tc.optimizer)
    steps_per_epoch = dataset.num_batches("train", B)
    total = min(tc.max_steps or 10**9, tc.epochs * steps_per_epoch)

    def ranks_forward(x, beta=None):
        # what the N ranks compute for one global batch: rank r's rows with rank r's noise, the mean of their
        # losses (DDP averages the gradients)
        step0 = model.step.clone()
        losses = []
        for r in range(world_size):
            model.step.copy_(step0)  # every rank sees the same step (KL warm-up)
            torch.set_rng_state(streams[r])
            out = model(shard(x, Context(r, world_size)), beta)
            streams[r] = torch.get_rng_state()
            losses.append(out.loss)
        out.loss = sum(losses) / world_size
        return out

    step = 0
    model.train()
    for epoch in range(tc.epochs):
        for x in dataset.batches("train", B, epoch=epoch):
            for g in opt.param_groups:
                g["lr"] = learning_rate(tc, step, steps_per_epoch, total)
            assert train_step(model, opt, x, config=tc, forward=ranks_forward).applied  # the trainer's own step
            step += 1
            if step >= total:
                return model.state_dict()
    return model.state_dict()


@pytest.mark.slow
def test_two_processes_end_with_the_weights_of_one_process_with_the_same_global_batch(tmp_path):
    out = tmp_path / "ddp"
    overrides = ["train.kl_warmup_epochs=1"]
    proc = torchrun("train", *TINY, *overrides, "--out", str(out))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("model written") == 1  # rank 0 alone prints
    ddp = hvae.load(out / "model").state_dict()
    ref = reference_run(overrides)
    assert ddp.keys() == ref.keys()
    for k in ref:
        assert torch.allclose(ddp[k].float(), ref[k].float(), atol=2e-5, rtol=1e-4), k
    assert int(ddp["step"]) == 12
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["split"] == "train"] == [2, 4, 6, 8, 10, 12]  # one writer


def _spawned(rank, world_size, port, out, fn):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    fn(rank, Path(out))


def _skip_case(rank, out):
    real_forward = hvae.HierarchicalVAE.forward

    def flaky_on_rank_1(self, x, beta=None):
        out = real_forward(self, x, beta)
        step = int(self.step)
        if rank == 1 and self.training and (step in (3, 4) or step > 7):
            out.loss = out.loss * float("nan")
        return out

    hvae.HierarchicalVAE.forward = flaky_on_rank_1
    cfg, raw = tiny("train.log_every=1", "train.max_consecutive_skips=3")
    try:
        train(cfg, out / "r", raw=raw, log=lambda m: None)
    except TrainingDiverged:
        (out / f"diverged-{rank}").write_text("yes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(case, tmp_path, timeout_s: float) -> None:
    """``case(rank, out)`` in two spawned ranks; fails the test if they have not ended within ``timeout_s``."""
    procs = mp.start_processes(
        _spawned, args=(2, _free_port(), str(tmp_path), case), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.time() + timeout_s
    while not procs.join(timeout=2):
        if time.time() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail("the ranks deadlocked")


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_makes_every_rank_skip(tmp_path):
    _run_ranks(_skip_case, tmp_path, 300)
    # NaN on rank 1 only at steps 3 and 4: both ranks skip both updates (metrics count 2, weights finite)
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in lines if r["split"] == "train" and r["step"] in (2, 6)] == [0, 2]
    # from step 8 on: the consecutive-skip stop is the same decision on both ranks, and leaves a checkpoint
    assert (tmp_path / "diverged-0").exists() and (tmp_path / "diverged-1").exists()
    model = hvae.load(latest_checkpoint(tmp_path / "r") / "model")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


def _sigterm_case(rank, out):
    import hvae.train as train_module

    real = train_module.learning_rate

    def lr_then_sigterm_on_rank_1(cfg, step, *a):
        if rank == 1 and step == 2:  # the signal reaches one rank only, during the third step
            os.kill(os.getpid(), signal.SIGTERM)
        return real(cfg, step, *a)

    train_module.learning_rate = lr_then_sigterm_on_rank_1
    cfg, raw = tiny("train.epochs=50", "train.checkpoint_every=1000", "train.eval_every=1000")
    try:
        train(cfg, out / "r", raw=raw, log=lambda m: None)
    except TrainingInterrupted as e:
        (out / f"stopped-{rank}").write_text(f"{e.exit_code} {e}")


@pytest.mark.slow
def test_a_sigterm_on_one_rank_stops_every_rank_after_the_same_step_with_a_checkpoint(tmp_path):
    _run_ranks(_sigterm_case, tmp_path, 300)
    said = [(tmp_path / f"stopped-{r}").read_text() for r in (0, 1)]
    assert said[0] == said[1] and said[0].startswith("143 SIGTERM received: stopped after step 3")
    assert json.loads((tmp_path / "r" / "checkpoints" / "latest.json").read_text())["step"] == 3


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(f"/proc/self/task/{os.getpid()}/children").exists(), reason="finds the ranks through /proc"
)
def test_killing_one_rank_stops_the_job_with_an_error_and_leaves_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "killed"
    long = ["train.epochs=200", "train.checkpoint_every=2", "train.eval_every=1000"]
    proc = torchrun("train", *TINY, *long, "--out", str(out))
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            ptr = out / "checkpoints" / "latest.json"
            if ptr.exists() and json.loads(ptr.read_text())["step"] >= 6:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the ranks wrote no checkpoint in time")
        victim = next(p for p in _children(proc.pid) if _rank_of(p) == 1)
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)  # the job ends: no rank waits forever
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "FAILED" in stderr and "rank      : 1" in stderr  # torchrun's report names the dead rank
    ckpt = latest_checkpoint(out)
    step = json.loads((ckpt / "state.json").read_text())["step"]
    model = hvae.load(ckpt / "model")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    # the 2-rank checkpoint resumes in one process (fresh noise streams: statistically, not bit for bit)
    cfg, raw = tiny(*long, f"train.max_steps={step + 3}")
    notes = []
    train(cfg, out, raw=raw, resume=True, log=notes.append)
    assert any("had 2 rank(s), now 1" in n for n in notes)
    assert int(hvae.load(out / "model").step) == step + 3


def test_sharded_evaluation_sums_add_up_to_the_whole_split():
    torch.manual_seed(0)
    model = build_model(tiny()[0].model).eval()
    x = torch.bernoulli(torch.rand(13, 64))
    shards = [eval_shard(13, Context(r, 3)) for r in range(3)]
    assert shards == [(0, 5), (5, 9), (9, 13)]
    per_rank, elbos = [], []
    for r, (lo, hi) in enumerate(shards):
        torch.manual_seed(100 + r)
        per_rank.append(evaluation_sums(model, x[lo:hi], num_samples=4))
        torch.manual_seed(100 + r)
        elbos.append(elbo_terms(model, x[lo:hi])["elbo"])  # the same noise: the same first draws
    total = {k: sum(s[k] for s in per_rank) for k in per_rank[0]}
    result = evaluate(model, x[:0], num_samples=4, reduce=lambda s: {k: s[k] + total[k] for k in s})
    assert result["num_examples"] == 13
    exact = torch.cat(elbos).double()
    assert result["elbo"] == pytest.approx(exact.mean().item(), abs=1e-9)
    assert result["elbo_stderr"] == pytest.approx(exact.std().item() / math.sqrt(13), rel=1e-6)


def test_bf16_autocast_gives_the_float32_elbo_within_half_a_percent():
    cfg = tiny("model.latent_dims=[8,4]", "model.hidden_dims=[64,32]")[0]
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    x = torch.bernoulli(torch.rand(256, 64))
    with torch.no_grad():
        torch.manual_seed(1)
        fp32 = model(x, beta=1.0)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x, beta=1.0)
    # log-probabilities and KL terms stay float32 under autocast
    assert bf16.elbo.dtype == bf16.log_px.dtype == bf16.kl[0].dtype == torch.float32
    # bf16 keeps 8 bits of mantissa (relative error ~0.4% per rounding); the batch-mean ELBO agrees to 0.5%
    assert abs(bf16.elbo.mean() - fp32.elbo.mean()) <= 5e-3 * abs(fp32.elbo.mean())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_runs_and_writes_float32_weights(tmp_path, precision):
    cfg, raw = tiny(f"train.precision={precision}", "train.max_steps=4")
    out = train(cfg, tmp_path / precision, raw=raw, log=lambda m: None)
    state = hvae.load(out / "model").state_dict()
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_failing_torch_compile_falls_back_to_eager_and_says_so(tmp_path, monkeypatch):
    def broken(module, **kw):
        def fn(*a, **k):
            raise RuntimeError("no C++ compiler")

        return fn

    monkeypatch.setattr(torch, "compile", broken)
    cfg, raw = tiny("train.compile=true", "train.max_steps=3")
    notes = []
    out = train(cfg, tmp_path / "c", raw=raw, log=notes.append)
    assert any("torch.compile failed" in n and "eagerly" in n for n in notes)
    assert int(hvae.load(out / "model").step) == 3  # the failed first call did not count a step


def test_channels_last_conv_model_trains(tmp_path):
    cfg, raw = tiny(
        "model.preset=conv_small",
        "model.latent_dims=[4,4]",
        "model.hidden_dims=[8,8]",
        "data.flatten=false",
        "train.channels_last=true",
        "train.max_steps=3",
    )
    out = train(cfg, tmp_path / "cl", raw=raw, log=lambda m: None)
    assert int(hvae.load(out / "model").step) == 3


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused():
    tc = tiny("train.batch_size=30")[0].train
    with pytest.raises(ConfigError, match="batch_size_per=rank"):
        global_batch_size(tc, 4)
    assert global_batch_size(tc, 3) == 30
    assert global_batch_size(tiny("train.batch_size=30", "train.batch_size_per=rank")[0].train, 4) == 120
    x = torch.arange(12).view(12, 1)
    assert torch.cat([shard(x, Context(r, 3)) for r in range(3)]).equal(x)


@pytest.mark.parametrize("collective", [True, False])
def test_a_stop_every_rank_shares_leaves_the_group_together(monkeypatch, collective):
    """A one-rank gloo group: an exception every rank raises at the same step (TrainingDiverged) meets the
    other ranks at a barrier before the group is torn down, as a normal exit does; any other does not wait
    (its peers may be gone)."""
    import torch.distributed as dist

    from hvae import distributed

    env = dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    barriers = []
    real_barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: (barriers.append(1), real_barrier(*a, **k))[1])
    error = TrainingDiverged("stop") if collective else RuntimeError("a rank's own failure")
    with pytest.raises(type(error)), distributed.session("cpu"):
        raise error
    assert len(barriers) == (1 if collective else 0) and not dist.is_initialized()


def _vq_case(rank, out):
    from hvae.quantize import VQFamily

    torch.distributed.init_process_group("gloo")
    try:
        torch.manual_seed(0)  # the same initial codebook on every rank, as DDP makes it
        fam = VQFamily(8, 2, decay=0.5, dead_threshold=0.0).train()
        fam.initialised.fill_(True)  # no restarts: every code in use
        e = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))  # the global batch
        with torch.enable_grad():
            fam.from_raw(e[rank * 20 : (rank + 1) * 20])  # this rank's half
        torch.save({k: v for k, v in fam.state_dict().items()}, out / f"vq-{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_vq_codebooks_of_data_parallel_ranks_follow_the_whole_batch(tmp_path):
    from hvae.quantize import VQFamily

    _run_ranks(_vq_case, tmp_path, 120)
    torch.manual_seed(0)
    one = VQFamily(8, 2, decay=0.5, dead_threshold=0.0).train()
    one.initialised.fill_(True)
    with torch.enable_grad():
        one.from_raw(torch.randn(40, 2, generator=torch.Generator().manual_seed(0)))
    for rank in (0, 1):
        got = torch.load(tmp_path / f"vq-{rank}.pt")
        for k in ("codebook", "ema_count", "ema_sum"):
            assert torch.allclose(got[k], one.state_dict()[k], atol=1e-6), (rank, k)


def _text_file(tmp_path):
    lines = [("ab " * (1 + (7 * i) % 11)).strip() for i in range(60)]  # lengths 2 .. 32 bytes
    (tmp_path / "t.txt").write_text("\n".join(f"{i} {s}" for i, s in enumerate(lines)) + "\n")
    return dict(source="text", path=str(tmp_path / "t.txt"), max_length=24, dedupe=False)


@pytest.mark.parametrize("kind", ["dynamic", "dequantize", "static", "text"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_a_ranks_rows_of_each_batch_are_its_slice_of_the_whole_batch_bit_for_bit(tmp_path, kind, world_size):
    options = {
        "dynamic": dict(binarize="dynamic", flatten=True),
        "dequantize": dict(dequantize=True),
        "static": dict(binarize="static"),
        "text": _text_file(tmp_path),
    }[kind]
    d = load_dataset(DataConfig(**options))
    B = 12 if kind == "text" else 30
    for epoch in (0, 1):
        whole = list(d.batches("train", B, epoch=epoch, start_batch=1))
        parts = [
            list(d.batches("train", B, epoch=epoch, start_batch=1, part=(r, world_size))) for r in range(world_size)
        ]
        assert len(whole) >= 2 and all(len(p) == len(whole) for p in parts)
        for i, x in enumerate(whole):
            for r in range(world_size):
                assert parts[r][i].dtype == x.dtype and torch.equal(parts[r][i], shard(x, Context(r, world_size)))
    if kind == "text":  # the whole batch's width, not the rank's own rows' (those can be shorter)
        assert any(p.shape[1] > text.trim_batch(p, d.tokenizer.pad_id).shape[1] for p in parts[0])


def test_a_rank_reads_and_binarizes_only_its_own_rows(monkeypatch):
    import numpy as np

    from hvae.data import loader

    d = load_dataset(DataConfig(binarize="dynamic", flatten=True))
    read, drawn = [], []
    real_rows, real_generator = loader.Split.rows, np.random.Generator

    class Counted:  # numpy's Generator, counting the uniforms drawn
        def __init__(self, bits):
            self.gen = real_generator(bits)

        def random(self, n, dtype):
            drawn.append(n)
            return self.gen.random(n, dtype=dtype)

    monkeypatch.setattr(loader.Split, "rows", lambda self, index: (read.append(len(index)), real_rows(self, index))[1])
    monkeypatch.setattr(np.random, "Generator", Counted)
    batches = list(d.batches("train", 40, epoch=2, part=(1, 4)))
    assert len(batches) == d.num_batches("train", 40) and all(x.shape == (10, 64) for x in batches)
    assert read == [10] * len(batches)  # 10 of each batch's 40 rows read
    # and only their noise drawn: rank 1 skips 640 values (a counter jump of 80 blocks, none left over)
    assert drawn == [0, 10 * 64] * len(batches)
    with pytest.raises(ValueError, match="rank 4 of 4"):
        next(d.batches("train", 40, part=(4, 4)))


# free bits and KL balancing over the global batch: 2 ranks x 8 rows train the objective of 1 process x 16 rows
OBJECTIVES = {
    "free bits per level": dict(free_bits_mode="layer"),
    "free bits per channel": dict(free_bits_mode="channel"),
    "KL balancing": dict(kl_balancing=True),
}


def _row_noise(t, **kw):
    # the posterior noise of a row from its own values: a rank's rows draw what the same rows draw in one process
    return torch.sin(1e3 * t)


def _objective_model(name):
    """The model (seed 0), the global batch (16 rows), the KL weight, and free bits between the two ranks' own
    batch means of level 1's KL (so each rank alone would decide differently from the global batch)."""
    torch.manual_seed(0)
    cfg = tiny("model.latent_dims=[4,2]")[0].model
    x = torch.bernoulli(torch.rand(16, 64, generator=torch.Generator().manual_seed(1)))
    options = OBJECTIVES[name]
    cfg = type(cfg).from_dict({**cfg.to_dict(), **options})
    torch.manual_seed(0)
    model = build_model(cfg).train()
    if "free_bits_mode" in options:
        with torch.no_grad():
            kl = model._kl_terms(model._infer(x))[0]  # level 1's (16, 4) nats
        kl = kl.sum(1) if options["free_bits_mode"] == "layer" else kl[:, 0]  # its first channel's
        lo, hi = sorted([kl[:8].mean().item(), kl[8:].mean().item()])
        model.config.free_bits = 0.7 * lo + 0.3 * hi  # above one rank's mean, below the other's and the global one
    return model, x, 0.5 if "kl_balancing" in options else 1.0


def _loss_and_grads(forward, model, x, beta):
    loss = forward(x, beta=beta).loss
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _objective_case(rank, out):
    from torch.nn.parallel import DistributedDataParallel

    torch.distributed.init_process_group("gloo")
    torch.randn_like = _row_noise
    try:
        results = {}
        for name in OBJECTIVES:
            for reduced in (True, False):
                model, x, beta = _objective_model(name)
                model.batch_sum = Context(rank, 2).all_sum if reduced else None
                ddp = DistributedDataParallel(model)
                results[name, reduced] = _loss_and_grads(ddp, model, x[8 * rank : 8 * (rank + 1)], beta)
        torch.save(results, out / f"objective-{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_free_bits_and_kl_balancing_of_two_ranks_are_those_of_one_process_on_the_global_batch(tmp_path, monkeypatch):
    _run_ranks(_objective_case, tmp_path, 300)
    ranks = [torch.load(tmp_path / f"objective-{r}.pt") for r in (0, 1)]
    monkeypatch.setattr(torch, "randn_like", _row_noise)
    for name in OBJECTIVES:
        model, x, beta = _objective_model(name)
        loss, grads = _loss_and_grads(model, model, x, beta)
        for reduced in (True, False):
            (loss0, grads0), (loss1, _) = ranks[0][name, reduced], ranks[1][name, reduced]
            same_loss = torch.allclose((loss0 + loss1) / 2, loss, rtol=1e-6, atol=1e-6)
            same_grads = grads0.keys() == grads.keys() and all(
                torch.allclose(grads0[k], grads[k], rtol=1e-5, atol=1e-6) for k in grads
            )
            # DDP averages the ranks' gradients: rank 0's are the average
            if reduced:
                assert same_loss and same_grads, name
            else:  # each rank's own batch means: another objective (what hvae trained before the all-reduce)
                assert not same_grads, name


def _compiled_ddp_case(rank, out):
    import logging

    real_compile = torch.compile  # aot_eager: dynamo and AOTAutograd as hvae's compile, without inductor's codegen
    torch.compile = lambda fn, **kw: real_compile(fn, backend="aot_eager", fullgraph=kw.get("fullgraph", False))
    said = []

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    logger = logging.getLogger("torch._dynamo.backends.distributed")
    logger.setLevel(logging.INFO)
    logger.addHandler(Keep())
    # 512-unit layers: about 3 MB of gradients, more than DDP's first bucket (1 MB)
    cfg, raw = tiny("model.hidden_dims=[512,512]", "model.free_bits=0.1", "train.compile=always", "train.max_steps=3")
    notes = []
    train(cfg, out / "r", raw=raw, log=notes.append)
    (out / f"compiled-{rank}.json").write_text(json.dumps({"said": said, "notes": notes}))


@pytest.mark.slow
def test_the_compiled_ddp_step_is_split_at_the_gradient_buckets_so_the_all_reduce_overlaps_backward(tmp_path):
    """The training step compiles inside DDP's forward, where dynamo's DDPOptimizer cuts the graph at DDP's
    bucket boundaries: each bucket's gradients are then complete, and its all-reduce starts, while the backward
    of the layers before it still runs (compiled outside the wrapper, one graph gives every gradient at its
    end). benchmarks/ddp_overlap.py measures the overlap."""
    import re

    _run_ranks(_compiled_ddp_case, tmp_path, 600)
    for rank in (0, 1):
        said = json.loads((tmp_path / f"compiled-{rank}.json").read_text())
        buckets = [int(m[1]) for s in said["said"] if (m := re.search(r"created (\d+) buckets", s))]
        assert buckets and min(buckets) >= 2, said["said"]
    notes = json.loads((tmp_path / "compiled-0.json").read_text())["notes"]  # rank 0 prints
    assert "note: train.compile: compiled" in notes, notes  # not a fallback to eager
    assert int(hvae.load(tmp_path / "r" / "model").step) == 3
