"""Compilation of the model's hot loops where it pays: lazily, measured, with an eager fallback.

``torch.compile`` fuses the many small elementwise operations of a hierarchical VAE (batch norm, activations,
the Gaussian merge, the KL terms) into a few kernels; on a 2-core CPU it makes an ``lvae_mnist`` step at
batch 256 1.4-1.6x faster (benchmarks/RESULTS.md), but compiling takes tens of seconds, a deep
convolutional model minutes, and on some platforms it fails or does not pay. :class:`LazyCompile` decides
per model:

* ``never``: eager.
* ``always``: compile at the first call.
* ``auto`` (the default): eager until the model has spent ``after_s`` seconds (300) in the loop (a short
  run never pays the compile), then compile, alternate compiled and eager steps until ``probe`` of each
  are timed, and keep whichever is faster (interleaved, as a machine's speed can drift by tens of percent
  within minutes: against the eager steps before the compile, a shared 2-core machine once judged a
  1.5x faster compiled step 1.07x); the probe stops after ``early`` (6) pairs of steps where they all point the
  same way (:func:`probe_verdict`). Where the caller knows what is left, the loop compiles as soon as
  that would take at least ``after_s`` eagerly, and never otherwise: ``steps_left`` (the trainer's
  remaining steps, timed by the median of the first ``probe`` eager steps) or ``work_left`` (seconds of
  eager calls: :func:`hvae.evaluate.evaluate` after its first batch).

The model only offers its graphs (``_elbo``, ``_iw_log_weights``); :func:`set_compile` gives it two of these:
``model.compiler`` for training calls (``model.train()`` with gradients on) and ``model.iw_compiler`` for the
full chunks of importance samples of the IW bound (:mod:`hvae.iw`; 1.4-1.6x faster compiled on a CPU, with
frozen weights); sampling and the other evaluation calls stay eager. The trainer and
:func:`hvae.evaluate.evaluate` tell them how much work is left. If compiling or a compiled call raises, the
model goes on eagerly and says why in :attr:`LazyCompile.status`. A step is timed as the wall clock between
two consecutive calls (for training: forward, backward, optimizer and data, as the user's loop runs them); any
other call in between restarts the clock.

**Frozen weights** (``freeze``, the IW bound's chunks on a CPU): inductor's freezing treats the weights as
constants, so it packs each linear map's weights once for the CPU's matrix kernels and folds batch norm into
them (1.1-1.3x faster chunks than compiled without it, interleaved). A frozen graph goes on using the
weights it was compiled with, so :meth:`LazyCompile.check_weights`, called before each batch of calls,
compares the tensors ``freeze()`` names with a copy taken at the compile (bit for bit) and drops the
compiled chunk when any differs: a training step, ``load_state_dict`` or an edit through ``.data`` in
between can never leave a bound computed with old weights. After such a change ``always`` compiles again at
the next call and ``auto`` goes back to eager (compiling again once the chunks have run ``after_s``
seconds), both without freezing: weights that change between bounds would need a compile for every bound,
and inductor keeps every frozen graph's constants until the process ends. The frozen graph is compiled whole
(``fullgraph``), from a copy of the function with its own code object: dynamo keeps compiled graphs per code
object and, guarding the weight tensors' identity but not their values, would otherwise find the frozen
graph again after the weights changed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
import types
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

import torch

MODES = ("never", "auto", "always")
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # inductor's own: where it writes generated code and its caches


def default_cache_dir() -> Path:
    """Where compiled graphs are kept across runs: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else
    ``$XDG_CACHE_HOME/hvae/inductor`` (``~/.cache/hvae/inductor``). Inductor's own default is a folder under
    the system's temporary directory, which a reboot (or a cluster job's end) empties."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hvae" / "inductor"


_cache: dict[str, object] = {"enabled": True, "dir": None, "applied": False}


def compile_cache(enabled: bool = True, path: str | os.PathLike | None = None) -> None:
    """Whether compiled graphs are cached on disk across runs, and where (default: :func:`default_cache_dir`).

    On (the default), torch's FX graph cache (inductor's generated code for a graph) and AOTAutograd cache
    (the forward and backward graphs it derives) keep each compiled model shape in the folder, so the next
    run that compiles the same graphs (the same model config, batch shape, torch version and device) loads
    them instead of compiling: a second ``hvae train`` of a config compiles in a fraction of the first's time
    (benchmarks/RESULTS.md). Dynamo still traces the model in every run, so a changed model or hvae version is
    a new graph and compiles afresh; the folder grows by each new graph's code (a few MB), and may be
    deleted at any time. Off: both caches are off, nothing is kept for later runs. Applies to the compiles
    that start after this call; ``train.compile_cache`` sets it for ``hvae train``.
    """
    _cache.update(enabled=bool(enabled), dir=None if path is None else Path(path), applied=False)


def _apply_cache() -> str | None:
    """Puts :func:`compile_cache`'s choice into torch's configuration before a compile; returns why the cache
    is off where it cannot be used (its folder cannot be made), else None."""
    if _cache["applied"]:
        return None
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    _cache["applied"] = True
    enabled = bool(_cache["enabled"])
    why = None
    if enabled:
        where = cast("Path | None", _cache["dir"]) or default_cache_dir()
        try:
            where.mkdir(parents=True, exist_ok=True)
            os.environ[CACHE_ENV] = str(where.resolve())  # read by inductor at each use of its cache folder
        except OSError as e:
            enabled, why = False, f"compile cache off: cannot make {where} ({e.strerror or e}); set {CACHE_ENV}"
    inductor_config.fx_graph_cache = enabled
    functorch_config.enable_autograd_cache = enabled
    return why


class LazyCompile:
    """Routes a module's training forward through ``torch.compile(fn)`` when that pays (see the module doc).

    ``status`` says where it stands: ``eager``, ``compiling (...)``, ``probing``, ``compiled (1.31x faster)``,
    ``eager (the compiled step was 0.97x the eager one)`` or ``eager (torch.compile failed: ...)``;
    ``events`` lists the changes in order (the trainer logs them).
    """

    def __init__(
        self,
        fn: Callable,
        mode: str = "auto",
        after_s: float = 300.0,
        probe: int = 20,
        skip: int = 5,
        early: int = 6,
        clock: Callable[[], float] = time.perf_counter,
        steps_left: Callable[[], int] | None = None,
        steps: str = "training steps",
        options: dict | None = None,
        freeze: Callable[[], Iterable[torch.Tensor]] | None = None,
        work_left: Callable[[], float | None] | None = None,
        verify: Callable[[Callable, Callable, tuple], str | None] | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"compile mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.fn, self.mode, self.after_s, self.probe, self.skip = fn, mode, after_s, probe, skip
        self.early = early  # pairs of probe steps that may settle it before probe pairs when they all agree
        self.clock, self.steps_left, self.steps = clock, steps_left, steps
        # seconds of eager calls the caller still expects (None: not known yet); see _due
        self.work_left = work_left
        # inductor's own random numbers cost ~40 ns each on a CPU (one Philox draw per element, not
        # vectorised) against ~3 ns for eager's normal_: the reparameterisation noise comes from eager
        self.options = {"fallback_random": True} if options is None else options
        # verify(fn, compiled, args) at the first compiled call: None if the compiled call computes what fn does,
        # else why not (a miscompilation: the call then runs eagerly for good); see verify_gradients
        self.verify = verify
        self.compiled: Callable | None = None
        self.freeze = freeze
        # (weight, its dtype, a copy of its bits at the compile); _thawed: a frozen graph was dropped
        self._frozen: list[tuple[torch.Tensor, torch.dtype, torch.Tensor]] | None = None
        self._thawed = False
        self.status = "eager"
        self.events: list[str] = []
        self._eager_s = 0.0  # training time spent eagerly
        self._eager_steps: deque[float] = deque(maxlen=50)
        self._compiled_steps: list[float] = []  # the probe's compiled and eager steps, alternating
        self._probe_eager: list[float] = []
        self._last: float | None = None
        self._last_compiled = False  # whether the call that ``_last`` started ran compiled
        self._done = mode == "never"

    def _say(self, status: str) -> None:
        self.status = status
        self.events.append(status)

    def _fail(self, e: Exception) -> None:
        self.compiled, self._done, self._frozen = None, True, None
        why = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        self._say(f"eager (torch.compile failed: {why}; {self.steps} run eagerly)")

    def other_call(self) -> None:
        """A call that is not a training step (evaluation, sampling): the step clock restarts."""
        self._last = None

    def __call__(self, *args, snapshot: Callable[[], Callable[[], None]] | None = None):
        """``fn(*args)`` or its compiled version. Before a compiled call ``snapshot()`` returns a function that
        undoes the call's side effects (the model's step counter), run if it fails before the eager call."""
        now = self.clock()
        dt = None if self._last is None else now - self._last
        self._last = now
        if self.compiled is None:
            if dt is not None:
                self._eager_s += dt
                self._eager_steps.append(dt)
            if self._done or not self._due():
                return self.fn(*args)
            try:
                self.compiled = self._compile()
            except Exception as e:  # torch.compile refuses this platform up front
                self._fail(e)
                return self.fn(*args)
            self._say(f"compiling (after {self._eager_s:.0f} s of eager {self.steps})")
        elif self.status == "probing":
            if dt is not None:
                (self._compiled_steps if self._last_compiled else self._probe_eager).append(dt)
                self._judge()
            if self.compiled is None or (self.status == "probing" and self._last_compiled):
                self._last_compiled = False  # judged no faster, or the probe's eager turn
                return self.fn(*args)
        undo = snapshot() if snapshot is not None else None
        wrong = None
        try:
            with self._freezing():
                if self.verify is not None and self.status.startswith("compiling"):
                    wrong = self.verify(self.fn, self.compiled, args)  # compiles; leaves no trace of its calls
                if wrong is None:
                    out = self.compiled(*args)
        except Exception as e:  # compilation happens at the first call; a later call may recompile
            if undo is not None:
                undo()
            self._fail(e)
            return self.fn(*args)
        if wrong is not None:
            self.compiled, self._done, self._frozen = None, True, None
            why = f"the compiled call differs from the eager one: {wrong}; a miscompilation by torch.compile"
            self._say(f"eager ({why}: {self.steps} run eagerly)")
            return self.fn(*args)
        self._last_compiled = True
        if self.status.startswith("compiling"):
            self._say("probing" if self.mode == "auto" else "compiled")
            self._last = self.clock()  # the compile itself is not a step
            if self.mode != "auto":
                self._done = True
        return out

    def _compile(self) -> Callable:
        """``torch.compile(fn)``; with frozen weights, of a copy of ``fn`` with its own code object. Dynamo
        keeps its compiled graphs per code object and would find a frozen graph again for the same weight
        tensors after their values changed; a fresh code object starts with no graphs."""
        why = _apply_cache()
        if why is not None:
            self.events.append(why)
        fn, weights = self.fn, self._weights_to_freeze()
        if weights is None:
            return torch.compile(fn, options=self.options)
        fn = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        self._frozen = [(t, t.dtype, _bits(t).clone()) for t in weights]
        # one graph: after a graph break dynamo would compile the rest of a called function under that
        # function's own code object, where a frozen graph of old weights could be found again; with
        # fullgraph a break fails the compile and the chunks run eagerly
        return torch.compile(fn, fullgraph=True, options=self.options)

    def _weights_to_freeze(self) -> list[torch.Tensor] | None:
        """The weights a compile now freezes, or None where it does not: freezing asked for, all of them on a
        CPU (where inductor packs them for its matrix kernels; on an accelerator the chunks compile as in
        training), and no frozen graph dropped before (weights that change between calls, as in a loop that
        trains between bounds, compile unfrozen: inductor keeps each frozen graph's constants for the life
        of the process)."""
        if self.freeze is None or self._thawed:
            return None
        weights = list(self.freeze())
        return weights if all(t.device.type == "cpu" for t in weights) else None

    def _freezing(self):
        """The context of a compiled call: inductor's freezing on for a frozen graph (a call may compile or
        recompile), nothing otherwise."""
        if self._frozen is None:
            return contextlib.nullcontext()
        import torch._inductor.config as inductor_config

        return inductor_config.patch(freezing=True)

    def check_weights(self) -> None:
        """Drops a frozen compiled graph whose weights have changed since its compile (see the module doc).
        Cheap: one comparison of the weights with their copy, before a batch of calls that use the same ones."""
        if self._frozen is None or self.freeze is None:  # (a frozen graph was made with freeze set)
            return
        now = list(self.freeze())
        if len(now) == len(self._frozen) and all(map(_unchanged, now, self._frozen)):
            return
        self.compiled, self._frozen, self._done, self._thawed = None, None, False, True
        if self.mode == "always":
            self._say("eager (the weights changed since the compile; compiling again at the next call, unfrozen)")
        else:  # auto: back to the eager clock; a run long enough compiles again, unfrozen
            self._eager_s, self._last = 0.0, None
            self._eager_steps.clear()
            self._compiled_steps.clear()
            self._probe_eager.clear()
            self._say(
                f"eager (the weights changed since the compile; compiling again after {self.after_s:.0f} s, unfrozen)"
            )

    def _due(self) -> bool:
        if self.mode == "always":
            return True
        timed = len(self._eager_steps) >= min(self.probe, cast(int, self._eager_steps.maxlen))  # enough for a median
        left = self.work_left() if self.work_left is not None else None  # seconds of eager calls to come
        if left is None and self.steps_left is not None and timed:
            left = self.steps_left() * statistics.median(self._eager_steps)
            if left < self.after_s:
                self._done = True  # too little left to win back a compile; the run ends eagerly
        if left is not None:  # the caller knows: compile as soon as what is left would take after_s eagerly
            return left >= self.after_s
        return timed and self._eager_s >= self.after_s

    def _judge(self) -> None:
        """After ``skip`` warm-up steps (recompiles), the compiled steps against the eager ones between them:
        ``probe`` pairs, or fewer where the first ``early`` already agree (see :func:`probe_verdict`)."""
        timed = self._compiled_steps[self.skip :]
        n = min(len(timed), len(self._probe_eager))
        eager = self._probe_eager[len(self._probe_eager) - n :]  # each compiled step's eager neighbour
        speedup = probe_verdict(eager, timed[len(timed) - n :], self.probe, self.early)
        if speedup is None:
            return
        self._done = True
        why = "" if n >= self.probe else f"; the probe stopped after {n} pairs of steps, all agreeing"
        if speedup > KEEP:
            self._say(f"compiled ({speedup:.2f}x faster{why})")
        else:
            self.compiled, self._frozen = None, None
            self._say(f"eager (the compiled step was {speedup:.2f}x the eager one{why})")


KEEP = 1.03  # the probe keeps the compiled step when it is more than this many times faster than the eager one


def probe_verdict(eager: list[float], compiled: list[float], probe: int = 20, early: int = 6) -> float | None:
    """The compiled step's speed-up over the eager one (median of the eager steps' seconds over the compiled
    steps'), once the probe can tell; None while it cannot yet.

    ``eager[i]`` and ``compiled[i]`` are neighbours in time (the probe alternates them), so each pair saw the
    same machine. It tells after ``probe`` pairs, or after ``early`` pairs or more (fewer than ``probe``) when
    every pair so far points the same way: each eager step more than ``KEEP`` times the compiled one, or each
    at most that. Were the true speed-up at ``KEEP`` (either side as likely for each pair), ``early`` = 6 pairs
    would agree by chance with probability 2 * 2^-6 = 3% (a pair that disagrees rules out an early verdict
    for good: the whole probe then runs). Unanimous pairs put the ratio of the medians on the same side of
    ``KEEP`` (order statistics keep a pairwise inequality), so the verdict and the speed-up it reports agree.
    """
    n = min(len(eager), len(compiled))
    if n >= probe:
        return statistics.median(eager[n - probe : n]) / statistics.median(compiled[n - probe : n])
    if n < early:
        return None
    ratios = [e / c for e, c in zip(eager[:n], compiled[:n])]
    if all(r > KEEP for r in ratios) or all(r <= KEEP for r in ratios):
        return statistics.median(eager[:n]) / statistics.median(compiled[:n])
    return None


_INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _unchanged(t: torch.Tensor, kept: tuple[torch.Tensor, torch.dtype, torch.Tensor]) -> bool:
    """Whether ``t`` is the tensor ``kept`` names, of the same dtype, with the same bits as its copy."""
    w, dtype, c = kept
    return t is w and t.dtype == dtype and t.device == c.device and t.shape == c.shape and torch.equal(_bits(t), c)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` seen as integers of its width, so that comparing two copies is bit for bit (a NaN equals itself)."""
    t = t.detach()
    if (t.is_floating_point() or t.is_complex()) and t.element_size() in _INTS:
        return t.contiguous().view(_INTS[t.element_size()])  # a copy only for a non-contiguous weight
    return t


def set_compile(model, mode: str = "auto", after_s: float = 300.0, steps_left: Callable[[], int] | None = None) -> None:
    """How a :class:`~hvae.HierarchicalVAE`'s two hot loops are compiled: its training calls (``model(x)`` in
    train mode with gradients on: the graph ``_elbo``) and the full chunks of importance samples of
    ``model.log_likelihood`` (the graph ``_iw_log_weights``). Every model starts at the defaults;
    ``model.set_compile(...)`` calls this.

    ``auto`` (the default) compiles a loop once it has run ``after_s`` seconds eagerly and keeps the compiled
    version only if it is faster; ``always`` compiles at the first call; ``never`` stays eager.
    ``steps_left()``, if given, says how many training steps remain: ``auto`` then compiles as soon as they
    would take ``after_s`` seconds eagerly (timed over the first 20 steps), and never otherwise. On a CPU the
    IW chunks compile with frozen weights (see the module doc): a change of the weights after the compile is
    noticed at the next bound, which compiles again (``always``) or runs eagerly (``auto``), unfrozen from
    then on. ``model.compiler.status`` and ``model.iw_compiler.status`` say what happened. Sampling is eager.
    """
    graphs = type(model)
    model.compiler = LazyCompile(
        graphs._elbo,
        mode=mode,
        after_s=after_s,
        steps_left=steps_left,
        verify=functools.partial(verify_gradients, model),  # a partial: a deepcopy of the model follows the copy
    )
    model.iw_compiler = LazyCompile(
        graphs._iw_log_weights,
        mode=mode,
        after_s=after_s,
        steps="chunks of importance samples",
        freeze=functools.partial(_state_tensors, model),  # a partial, not a lambda: a deepcopy follows the copy
        verify=verify_values,
    )


#: the compiled step is refused when its gradient differs from the eager one by more than this share of the
#: eager gradient's norm, or a parameter's by more than MISMATCH_PARAM of its own (for the parameters that hold at
#: least 1% of the norm); float32 reorderings differ by ~1e-6, bf16 autocast by ~1e-2
MISMATCH_TOTAL = 0.1
MISMATCH_PARAM = 0.5


def verify_gradients(model, fn: Callable, compiled: Callable, args: tuple) -> str | None:
    """Whether ``compiled(*args)`` (the first call compiles it) gives the training step of ``fn(*args)``: the
    same loss and gradients w.r.t. every parameter on the same batch with the same noise (the compiled step
    draws its noise from eager's generator). None if so, else what differs. Both calls are undone: the
    buffers (step counter, batch-norm statistics, spectral vectors) and the random generators are as before,
    and no ``.grad`` is touched. Inductor can miscompile a backward pass (torch 2.13 on a CPU gave NVAE's
    official cells a gradient 23% off, the combiners' none: benchmarks/RESULTS.md); a step checked once here
    cannot train a model quietly wrong. Several processes (``model.batch_sum`` set: the loss all-reduces) are
    not checked: the two extra calls would pair with other ranks' collectives."""
    if getattr(model, "batch_sum", None) is not None:
        return None
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    buffers = list(model.buffers())
    saved = [b.detach().clone() for b in buffers]

    def step(f: Callable) -> tuple[torch.Tensor, tuple]:
        try:
            loss = f(*args).loss
            return loss.detach().float(), torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            with torch.no_grad():
                for b, s in zip(buffers, saved):
                    b.copy_(s)

    results = _with_the_same_noise([functools.partial(step, f) for f in (fn, compiled)], _cuda_devices(params))
    return gradient_mismatch([n for n, _ in named], *results[0], *results[1])


def _with_the_same_noise(calls: list[Callable], cuda: list[int]) -> list:
    """Each of ``calls`` run from the same state of the CPU's and the ``cuda`` devices' random generators, which
    are left as they were before."""
    with torch.random.fork_rng(devices=cuda):  # the real step then draws what it would have drawn
        cpu_rng = torch.get_rng_state()
        cuda_rng = [(d, torch.cuda.get_rng_state(d)) for d in cuda]
        outs = []
        for call in calls:
            torch.set_rng_state(cpu_rng)
            for d, state in cuda_rng:
                torch.cuda.set_rng_state(state, d)
            outs.append(call())
    return outs


def _cuda_devices(tensors) -> list[int]:
    return sorted({t.device.index or 0 for t in tensors if isinstance(t, torch.Tensor) and t.device.type == "cuda"})


def verify_values(fn: Callable, compiled: Callable, args: tuple) -> str | None:
    """Whether ``compiled(*args)`` (the first call compiles it) returns what ``fn(*args)`` does, a tensor, with
    the same noise (see :func:`verify_gradients`; for the IW bound's chunks of log-weights, which change no
    buffer). None if so, else what differs; the random generators are left as they were."""
    outs = _with_the_same_noise([functools.partial(f, *args) for f in (fn, compiled)], _cuda_devices(args))
    return value_mismatch(*(o.detach().float() for o in outs))


#: compiled values refused when off by more than VALUES_ATOL + VALUES_RTOL * |eager| anywhere (nats for log-weights;
#: float32 reorderings and inductor's folding of batch norm differ by ~1e-5 relative)
VALUES_ATOL, VALUES_RTOL = 1e-2, 1e-3


def value_mismatch(a: torch.Tensor, b: torch.Tensor) -> str | None:
    """None when ``b`` equals ``a`` (eager) within the tolerances above and is finite where ``a`` is, else what
    differs, in words."""
    if a.shape != b.shape:
        return f"its values have shape {tuple(b.shape)}, the eager ones {tuple(a.shape)}"
    finite = torch.isfinite(a)
    if not bool(torch.isfinite(b)[finite].all()):
        return "its values are not finite where the eager ones are"
    err = (a - b).abs()[finite]
    if err.numel() and bool((err > VALUES_ATOL + VALUES_RTOL * a.abs()[finite]).any()):
        return f"its values are off by up to {float(err.max()):.3g} (the eager ones up to {float(a.abs().max()):.3g})"
    return None


def gradient_mismatch(names: list[str], loss_a, grads_a, loss_b, grads_b) -> str | None:
    """None when the losses and gradients ``b`` agree with ``a`` (the eager step's) within :data:`MISMATCH_TOTAL`
    and :data:`MISMATCH_PARAM`, else what differs, in words. Where the eager step itself is not finite there is
    nothing to compare (the trainer skips such steps)."""
    if not bool(torch.isfinite(loss_a)) or any(g is not None and not bool(torch.isfinite(g).all()) for g in grads_a):
        return None
    if not bool(torch.isfinite(loss_b)):
        return f"its loss is {float(loss_b)}, the eager one {float(loss_a):.6g}"
    if abs(float(loss_b) - float(loss_a)) > MISMATCH_TOTAL * (abs(float(loss_a)) + 1.0):
        return f"its loss is {float(loss_b):.6g}, the eager one {float(loss_a):.6g}"
    rows = []  # (difference, eager norm, name)
    for name, a, b in zip(names, grads_a, grads_b):
        if (a is None) != (b is None):
            return f"{name} gets a gradient in one of them only"
        if a is not None:
            rows.append((float((a.float() - b.float()).norm()), float(a.float().norm()), name))
    total = sum(e * e for _, e, _ in rows) ** 0.5
    off = sum(d * d for d, _, _ in rows) ** 0.5
    if (
        off != off
        or off > MISMATCH_TOTAL * total
        or any(e >= 0.01 * total and d > MISMATCH_PARAM * e for d, e, _ in rows)
    ):
        worst = sorted(rows, reverse=True)[:3]
        each = ", ".join(f"{n} {d / max(e, 1e-30):.0%} of its own" for d, e, n in worst)
        return f"the gradient is {off / max(total, 1e-30):.0%} of its norm off (most in {each})"
    return None


def _state_tensors(model) -> list[torch.Tensor]:
    """What a frozen compiled chunk of the IW bound takes as constants: every parameter and buffer."""
    return [*model.parameters(), *model.buffers()]


def compiled_training_call(model, x, beta):
    """``model._elbo(x, beta)`` through ``model.compiler``; a compiled call that fails is undone (the ``step``
    it advanced put back) before the eager retry."""

    def snapshot():
        saved = model.step.clone()
        return lambda: model.step.copy_(saved)

    return model.compiler(model, x, beta, snapshot=snapshot)
