"""hvae's Adam: the same steps and state as torch's fused Adam, through the shortcut wherever it applies."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import hvae
from hvae.checkpoint import _flatten_optimizer, _unflatten_optimizer
from hvae.optim import Adam


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))


def _grads(step: int, params, skip: int | None = None) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        p.grad = None if i == skip else torch.randn(p.shape, generator=g).to(p.dtype)


@pytest.fixture
def counted(monkeypatch):
    """How many steps went through ``torch.optim.Adam.step`` itself (not the kept lists)."""
    calls = []
    base = torch.optim.Adam.step

    def step(self, closure=None):
        calls.append(type(self))
        return base(self, closure)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    return calls


def _pair(**options) -> tuple[Adam, torch.optim.Adam]:
    """hvae's Adam and torch's fused Adam over two copies of one network."""
    ours = hvae.make_optimizer(_net(), lr=1e-2, **options)
    return ours, torch.optim.Adam(_net().parameters(), lr=1e-2, fused=True, **options)


def _step_both(ours, ref, step: int, skip: int | None = None) -> None:
    """The same gradients for both optimisers' parameters (every group), then a step of each."""
    for opt in (ours, ref):
        _grads(step, [p for g in opt.param_groups for p in g["params"]], skip)
    ours.step()
    ref.step()


def _assert_same(ours: torch.optim.Optimizer, ref: torch.optim.Optimizer) -> None:
    for g, h in zip(ours.param_groups, ref.param_groups):
        for p, q in zip(g["params"], h["params"]):
            assert torch.equal(p, q)
            a, b = ours.state[p], ref.state[q]
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), k


def _assert_same_state_dicts(sd: dict, ref_sd: dict) -> None:
    for i in ref_sd["state"]:
        for k, v in ref_sd["state"][i].items():
            assert torch.equal(sd["state"][i][k], v), k


@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.01}, {"decoupled_weight_decay": True, "weight_decay": 0.1}])
def test_adam_takes_torch_fused_adams_steps(options, counted):
    ours, ref = _pair(**options)
    assert type(ours) is Adam
    for step in range(8):
        if step == 5:  # a scheduler's change of the learning rate applies at once
            for opt in (ours, ref):
                opt.param_groups[0]["lr"] = 3e-3
        # at step 4 one parameter without a gradient: torch's own step, that one left alone
        _step_both(ours, ref, step, skip=2 if step == 4 else None)
        _assert_same(ours, ref)
    # torch's own step for the reference's 8, and for ours the first (no state yet) and the one with a gap
    assert counted.count(Adam) == 2 and counted.count(torch.optim.Adam) == 8


def test_adam_state_saves_and_loads_as_torchs(tmp_path, counted):
    ours, ref = _pair()
    for step in range(3):
        _step_both(ours, ref, step)
    sd = ours.state_dict()
    ref_sd = ref.state_dict()
    assert sd["param_groups"] == ref_sd["param_groups"] and sd["state"][0]["step"].item() == 3.0
    _assert_same_state_dicts(sd, ref_sd)
    tensors, meta = _flatten_optimizer(sd)  # hvae's checkpoint format: safetensors refuses shared memory
    assert len({t.untyped_storage().data_ptr() for t in tensors.values()}) == len(tensors)
    save_file(tensors, str(tmp_path / "optimizer.safetensors"))
    loaded_net = _net()
    with torch.no_grad():
        for p, q in zip(loaded_net.parameters(), ours.param_groups[0]["params"]):
            p.copy_(q)
    loaded = hvae.make_optimizer(loaded_net, lr=1e-2)
    loaded.load_state_dict(_unflatten_optimizer(load_file(str(tmp_path / "optimizer.safetensors")), meta))
    before = counted.count(Adam)
    for step in range(3, 6):
        _step_both(loaded, ref, step)
        _assert_same(loaded, ref)
    assert counted.count(Adam) == before  # a loaded state takes the shortcut from its first step


def test_adam_leaves_what_the_shortcut_does_not_cover_to_torch(counted):
    ours, ref = _pair()
    for step in range(6):
        if step == 2:  # AMP's grad scaling, as torch.amp.GradScaler hands it to a fused optimiser
            for opt in (ours, ref):
                opt.grad_scale, opt.found_inf = torch.tensor(2.0), torch.tensor(0.0)
        if step == 3:
            for opt in (ours, ref):
                del opt.grad_scale, opt.found_inf
                opt.param_groups[0]["maximize"] = True  # an option changed in the middle of training
        if step == 4:
            for opt in (ours, ref):
                opt.param_groups[0]["maximize"] = False
        _step_both(ours, ref, step)
        _assert_same(ours, ref)
    # torch's step: the first, the scaled one and the maximising one; the shortcut at steps 1, 4 and 5
    assert counted.count(Adam) == 3
    loss = ours.step(lambda: torch.tensor(1.5))  # a closure: torch's step, its loss returned
    assert loss == 1.5 and counted.count(Adam) == 4


@pytest.mark.parametrize("options", [{"fused": False, "foreach": True}, {"amsgrad": True}])
def test_adam_without_the_shortcut_is_torchs_adam(options, counted):
    net = _net()
    opt = hvae.make_optimizer(net, lr=1e-2, **options)
    for step in range(3):
        _grads(step, list(net.parameters()))
        opt.step()
    assert counted.count(Adam) == 3  # nothing kept: every step is torch's


def test_adam_state_dict_is_live_like_torchs():
    ours, ref = _pair()
    for step in range(2):
        _step_both(ours, ref, step)
    sd, ref_sd = ours.state_dict(), ref.state_dict()  # kept, not copied: torch's follows later steps
    for step in range(2, 4):
        _step_both(ours, ref, step)
    _assert_same_state_dicts(sd, ref_sd)
    assert sd["state"][0]["step"].item() == 4.0


def test_adam_runs_its_hooks_once_a_step():
    torch.optim.Adam(_net().parameters())  # a torch Adam exists: torch has wrapped its step with the hooks
    net = _net()
    opt = hvae.make_optimizer(net, lr=1e-2)
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    for step, skip in enumerate([None, None, 1]):  # torch's step, the shortcut, torch's step (a gap)
        _grads(step, list(net.parameters()), skip)
        opt.step()
        assert calls == ["pre", "post"] * (step + 1)


def test_adam_notices_state_and_parameters_replaced_in_place(counted):
    ours, ref = _pair()
    extra = {opt: nn.Parameter(torch.ones(5)) for opt in (ours, ref)}
    for step in range(7):
        if step == 3:  # a parameter's state replaced, as a sharded optimiser's load_state_dict does
            for opt in (ours, ref):
                p = opt.param_groups[0]["params"][0]
                opt.state[p] = {k: v.clone() * 0.5 for k, v in opt.state[p].items()}
        if step == 5:  # a parameter swapped into a group
            for opt in (ours, ref):
                opt.param_groups[0]["params"][1] = extra[opt]
        _step_both(ours, ref, step)
        _assert_same(ours, ref)
    # torch's step at 0 and 5 (the new parameter has no state); the shortcut, gathered again, elsewhere
    assert counted.count(Adam) == 2


def test_adam_takes_the_shortcut_again_once_an_option_is_off(counted):
    net = _net()
    opt = hvae.make_optimizer(net, lr=1e-2, maximize=True)
    for step in range(5):
        if step == 2:
            opt.param_groups[0]["maximize"] = False
        _grads(step, list(net.parameters()))
        opt.step()
    assert counted.count(Adam) == 2  # steps 0 and 1; 2-4 through the kept lists


def test_adam_with_a_group_of_mixed_dtypes_is_torchs_adam(counted):
    def groups(net):  # a float32 group, and a group of a float64 and a float32 parameter
        torch.manual_seed(1)
        mixed = [nn.Parameter(torch.randn(4, dtype=torch.float64)), nn.Parameter(torch.randn(3))]
        return [{"params": list(net.parameters())}, {"params": mixed, "lr": 5e-3}]

    ours_groups, ref_groups = groups(_net()), groups(_net())
    ours = Adam(ours_groups, lr=1e-2, fused=True)
    ref = torch.optim.Adam(ref_groups, lr=1e-2, fused=True)
    for step in range(4):
        _step_both(ours, ref, step)
        _assert_same(ours, ref)
    assert counted.count(Adam) == 4  # a group the fused kernel takes in two calls: torch's step every time
