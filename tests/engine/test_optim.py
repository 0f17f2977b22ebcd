"""LARS against an independent float64 implementation; parameter groups; lr/wd schedules."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from twist.config import DEFAULTS, load_config
from twist.engine.optim import (
    LARS,
    BarlowTwinsLARS,
    OptimConfig,
    ScheduleConfig,
    apply_schedules,
    build_optimizer,
    build_schedules,
    split_decay_groups,
)

# ---- LARS ------------------------------------------------------------------------------------------

def reference_lars(params, grads_per_step, groups):
    """Plain float64 numpy LARS.

    params: list of arrays; grads_per_step: list (steps) of lists (params) of arrays or None;
    groups: list of dicts with keys idx (param indices), lr, momentum, wd, eta, exclude.
    """
    params = [np.array(p, dtype=np.float64) for p in params]
    bufs = [None] * len(params)
    for grads in grads_per_step:
        for g_cfg in groups:
            for i in g_cfg["idx"]:
                g = grads[i]
                if g is None:
                    continue
                p = params[i]
                wd, lr = g_cfg["wd"], g_cfg["lr"]
                p_norm, g_norm = np.sqrt(np.sum(p * p)), np.sqrt(np.sum(g * g))
                if g_cfg["exclude"] or p_norm == 0 or g_norm == 0:
                    ratio = 1.0
                else:
                    ratio = g_cfg["eta"] * p_norm / (g_norm + wd * p_norm)
                u = (g + wd * p) * ratio * lr
                bufs[i] = u if bufs[i] is None else g_cfg["momentum"] * bufs[i] + u
                params[i] = p - bufs[i]
    return params


def _toy_problem(seed=0, steps=5):
    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (4,), (2, 4), (3, 2), (2,), (5,)]
    params = [rng.normal(size=s) for s in shapes]
    params[2] = np.zeros((2, 4))                 # zero-initialised weight: |p| == 0 on the first step
    grads_per_step = []
    for step in range(steps):
        grads = [rng.normal(size=s) * (0.5 + step) for s in shapes]
        grads[3] = np.zeros((3, 2)) if step % 2 == 0 else grads[3]   # |g| == 0 on some steps
        grads[5] = None                                              # never gets a gradient
        grads_per_step.append(grads)
    groups = [
        dict(idx=[0, 2, 3], lr=0.7, momentum=0.9, wd=0.05, eta=0.02, exclude=False),
        dict(idx=[1, 4, 5], lr=0.3, momentum=0.8, wd=0.01, eta=0.02, exclude=True),
    ]
    return params, grads_per_step, groups


def _run_lars(params, grads_per_step, groups, dtype):
    tensors = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in params]
    opt = LARS([{"params": [tensors[i] for i in g["idx"]], "lr": g["lr"], "momentum": g["momentum"],
                 "weight_decay": g["wd"], "eta": g["eta"], "lars_exclude": g["exclude"]} for g in groups])
    for grads in grads_per_step:
        for t, g in zip(tensors, grads):
            t.grad = None if g is None else torch.tensor(g, dtype=dtype)
        opt.step()
    return tensors, opt


def test_lars_matches_float64_reference_float64():
    params, grads, groups = _toy_problem()
    expected = reference_lars(params, grads, groups)
    tensors, _ = _run_lars(params, grads, groups, torch.float64)
    for t, e in zip(tensors, expected):
        np.testing.assert_allclose(t.detach().numpy(), e, rtol=1e-12, atol=1e-14)


def test_lars_matches_float64_reference_float32():
    params, grads, groups = _toy_problem(seed=1)
    expected = reference_lars(params, grads, groups)
    tensors, _ = _run_lars(params, grads, groups, torch.float32)
    for t, e in zip(tensors, expected):
        np.testing.assert_allclose(t.detach().numpy(), e, rtol=1e-5, atol=1e-6)


def test_lars_reference_is_sensitive_to_each_ingredient():
    """The comparison above would catch a dropped ratio, wd, momentum or exclusion."""
    params, grads, groups = _toy_problem()
    tensors, _ = _run_lars(params, grads, groups, torch.float64)
    got = [t.detach().numpy() for t in tensors]
    for change in (dict(momentum=0.0), dict(wd=0.0), dict(eta=0.04)):
        variant = [dict(g, **change) for g in groups]
        other = reference_lars(params, grads, variant)
        assert any(not np.allclose(a, b, rtol=1e-9) for a, b in zip(got, other)), change
    no_exclude = [dict(g, exclude=False) for g in groups]
    other = reference_lars(params, grads, no_exclude)
    assert not np.allclose(got[1], other[1], rtol=1e-9)


def test_lars_first_step_values_by_hand():
    # One weight, one step: p = [3, 4] (|p| = 5), g = [0, 1] (|g| = 1), wd = 0.2, eta = 0.1, lr = 2.
    p = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    opt = LARS([p], lr=2.0, momentum=0.9, weight_decay=0.2, eta=0.1)
    p.grad = torch.tensor([0.0, 1.0], dtype=torch.float64)
    opt.step()
    ratio = 0.1 * 5 / (1 + 0.2 * 5)                 # 0.25
    u = np.array([0.6, 1.8]) * ratio * 2.0          # g + wd*p = [0.6, 1.8]
    np.testing.assert_allclose(p.detach().numpy(), np.array([3.0, 4.0]) - u, rtol=1e-14)


def test_lars_skips_params_without_grad_and_keeps_no_state_for_them():
    params, grads, groups = _toy_problem()
    tensors, opt = _run_lars(params, grads, groups, torch.float64)
    np.testing.assert_array_equal(tensors[5].detach().numpy(), params[5])
    assert "momentum_buffer" not in opt.state[tensors[5]]
    assert "momentum_buffer" in opt.state[tensors[0]]


@pytest.mark.parametrize("rule", ["twist", "barlow_twins"])
def test_lars_does_not_modify_gradients_and_returns_closure_loss(rule):
    p = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    opt = {"twist": LARS, "barlow_twins": BarlowTwinsLARS}[rule]([p], lr=0.1, weight_decay=0.3)
    g = torch.tensor([[0.1, 0.2], [-0.3, 0.4]])

    def closure():
        p.grad = g.clone()
        return torch.tensor(7.0)

    assert opt.step(closure).item() == 7.0
    assert torch.equal(p.grad, g)


class _NewTensorSizes(TorchDispatchMode):
    """Records the element count of every tensor an op allocates: outputs that are neither its inputs nor
    views of their memory (a view allocates nothing)."""

    def __init__(self):
        super().__init__()
        self.sizes, self.calls = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls += 1
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        ids, memory = {id(t) for t in inputs}, {t.untyped_storage().data_ptr() for t in inputs}
        created = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and id(t) not in ids
                   and t.untyped_storage().data_ptr() not in memory]
        self.sizes += [t.numel() for t in created]
        return out


@pytest.mark.parametrize("exclude", [False, True])
def test_lars_step_allocates_no_parameter_sized_temporaries(exclude):
    """After the first step (which creates the momentum buffers) a step only makes per-parameter scalars:
    the head's 36 M+ parameters make the step memory-bound, and a temporary copy of them doubles its
    traffic (bench/optimizer.py)."""
    params = [torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32))]
    opt = LARS(params, lr=0.1, weight_decay=0.01, lars_exclude=exclude)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    with _NewTensorSizes() as mode:
        opt.step()
    assert mode.calls > 0 and max(mode.sizes, default=0) < 32, mode.sizes


# ---- Barlow Twins' LARS ----------------------------------------------------------------------------

def reference_barlow_twins_lars(params, grads_per_step, groups):
    """Plain float64 numpy LARS as the Barlow Twins paper describes its optimiser (and its code runs it).

    The update d = g + wd * p is scaled by the trust ratio eta * |p| / |d|; the momentum accumulates
    the scaled update and the learning rate multiplies the momentum: mu = m * mu + ratio * d,
    p -= lr * mu. Biases and norm parameters (exclude) get neither weight decay nor the ratio.
    groups as for ``reference_lars``, but lr is a list: one value per step.
    """
    params = [np.array(p, dtype=np.float64) for p in params]
    mus = [np.zeros_like(p) for p in params]
    for step, grads in enumerate(grads_per_step):
        for g_cfg in groups:
            for i in g_cfg["idx"]:
                if grads[i] is None:
                    continue
                p = params[i]
                d = grads[i] if g_cfg["exclude"] else grads[i] + g_cfg["wd"] * p
                p_norm, d_norm = np.sqrt(np.sum(p * p)), np.sqrt(np.sum(d * d))
                ratio = 1.0 if (g_cfg["exclude"] or p_norm == 0 or d_norm == 0) else g_cfg["eta"] * p_norm / d_norm
                mus[i] = g_cfg["momentum"] * mus[i] + ratio * d
                params[i] = p - g_cfg["lr"][step] * mus[i]
    return params


def _bt_toy_problem(seed=0, steps=5):
    params, grads_per_step, groups = _toy_problem(seed, steps)
    lrs = [[0.7, 0.2, 1.1, 0.5, 0.9][s % 5] for s in range(steps)]    # the lr moves, as under a schedule
    groups = [dict(g, lr=[lr * (1.0 if k == 0 else 0.4) for lr in lrs]) for k, g in enumerate(groups)]
    groups[1]["wd"] = 0.0                     # as build_optimizer sets it for the excluded group
    return params, grads_per_step, groups


def _run_bt_lars(params, grads_per_step, groups, dtype):
    tensors = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in params]
    opt = BarlowTwinsLARS([{"params": [tensors[i] for i in g["idx"]], "lr": g["lr"][0], "momentum": g["momentum"],
                            "weight_decay": g["wd"], "eta": g["eta"], "lars_exclude": g["exclude"]} for g in groups])
    for step, grads in enumerate(grads_per_step):
        for group, g_cfg in zip(opt.param_groups, groups):
            group["lr"] = g_cfg["lr"][step]
        for t, g in zip(tensors, grads):
            t.grad = None if g is None else torch.tensor(g, dtype=dtype)
        opt.step()
    return tensors, opt


@pytest.mark.parametrize("dtype, rtol, atol", [(torch.float64, 1e-12, 1e-14), (torch.float32, 1e-5, 1e-6)])
def test_barlow_twins_lars_matches_its_float64_formula(dtype, rtol, atol):
    params, grads, groups = _bt_toy_problem(seed=2)
    expected = reference_barlow_twins_lars(params, grads, groups)
    tensors, opt = _run_bt_lars(params, grads, groups, dtype)
    for t, e in zip(tensors, expected):
        np.testing.assert_allclose(t.detach().numpy(), e, rtol=rtol, atol=atol)
    assert "momentum_buffer" not in opt.state[tensors[5]]      # never had a gradient: untouched, no state
    assert torch.equal(tensors[5].detach(), torch.tensor(params[5], dtype=dtype))


def test_barlow_twins_lars_differs_from_twist_lars_and_its_formula_from_each_variant():
    """The two rules are told apart (lr after the momentum, |g + wd p| in the ratio), and the formula
    above would catch a dropped ratio, weight decay, momentum or exclusion."""
    params, grads, groups = _bt_toy_problem()
    got = [t.detach().numpy() for t in _run_bt_lars(params, grads, groups, torch.float64)[0]]
    twist_rule, twist_state = params, {}
    for step, step_grads in enumerate(grads):   # TWIST's rule, replayed with the same per-step lrs
        step_groups = [dict(g, lr=g["lr"][step], idx=[i for i in g["idx"] if step_grads[i] is not None])
                       for g in groups]
        twist_rule, twist_state = _reference_step(twist_rule, step_grads, step_groups, twist_state)
    assert not np.allclose(got[0], twist_rule[0], rtol=1e-6)
    for change in (dict(momentum=0.0), dict(wd=0.1), dict(eta=0.04)):
        variant = [dict(g, **change) if k == 0 else g for k, g in enumerate(groups)]
        other = reference_barlow_twins_lars(params, grads, variant)
        assert not np.allclose(got[0], other[0], rtol=1e-9), change
    other = reference_barlow_twins_lars(params, grads, [dict(g, exclude=False) for g in groups])
    assert not np.allclose(got[1], other[1], rtol=1e-9)


def test_barlow_twins_lars_first_steps_by_hand():
    # p = [3, 4] (|p| = 5), g = [0, 1], wd = 0.2: d = [0.6, 1.8], |d| = sqrt(3.6); eta = 0.1.
    p = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    opt = BarlowTwinsLARS([p], lr=2.0, momentum=0.9, weight_decay=0.2, eta=0.1)
    p.grad = torch.tensor([0.0, 1.0], dtype=torch.float64)
    opt.step()
    mu = 0.1 * 5 / math.sqrt(3.6) * np.array([0.6, 1.8])
    after_one = np.array([3.0, 4.0]) - 2.0 * mu
    np.testing.assert_allclose(p.detach().numpy(), after_one, rtol=1e-14)
    # Second step at a new lr with a zero gradient: d = wd * p, ratio = eta / wd; lr multiplies the whole momentum.
    opt.param_groups[0]["lr"] = 0.5
    p.grad = torch.zeros(2, dtype=torch.float64)
    opt.step()
    mu = 0.9 * mu + (0.1 / 0.2) * 0.2 * after_one
    np.testing.assert_allclose(p.detach().numpy(), after_one - 0.5 * mu, rtol=1e-14)


@pytest.mark.parametrize("exclude", [False, True])
def test_barlow_twins_lars_step_allocates_no_parameter_sized_temporaries(exclude):
    """The norm of g + wd * p comes from |g|, |p| and the dot product <g, p>, never from g + wd * p
    itself; a channels-last convolution weight (the backbone's layout with train.channels_last) too."""
    conv = torch.nn.Parameter(torch.randn(16, 8, 3, 3).to(memory_format=torch.channels_last))
    params = [torch.nn.Parameter(torch.randn(64, 32)), conv, torch.nn.Parameter(torch.randn(32))]
    opt = BarlowTwinsLARS(params, lr=0.1, weight_decay=0.01, lars_exclude=exclude)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    with _NewTensorSizes() as mode:
        opt.step()
    assert mode.calls > 0 and max(mode.sizes, default=0) < 32, mode.sizes


def test_barlow_twins_lars_norm_matches_with_a_channels_last_weight():
    torch.manual_seed(0)
    p = torch.randn(6, 4, 3, 3, dtype=torch.float64).to(memory_format=torch.channels_last)
    g = torch.randn(6, 4, 3, 3, dtype=torch.float64)   # a contiguous gradient beside a channels-last weight
    expected = reference_barlow_twins_lars([p.numpy()], [[g.numpy()]],
                                           [dict(idx=[0], lr=[0.3], momentum=0.9, wd=0.05, eta=0.02, exclude=False)])
    param = torch.nn.Parameter(p.clone(memory_format=torch.channels_last))
    opt = BarlowTwinsLARS([param], lr=0.3, weight_decay=0.05, eta=0.02)
    param.grad = g
    opt.step()
    np.testing.assert_allclose(param.detach().numpy(), expected[0], rtol=1e-12)


def test_build_barlow_twins_lars_and_its_step_under_the_schedules():
    """lars_rule=barlow_twins through build_optimizer + apply_schedules on a real module equals the formula."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()
    cfg = _optim_cfg(name="lars", lars_rule="barlow_twins", lr=0.4, weight_decay=0.02, weight_decay_end=0.02,
                     momentum=0.9, lars_eta=0.01, warmup_epochs=1)
    opt = build_optimizer(model, cfg)
    assert type(opt) is BarlowTwinsLARS
    g0, g1 = opt.param_groups
    assert (g0["weight_decay"], g0["lars_exclude"], g1["weight_decay"], g1["lars_exclude"]) == (0.02, False, 0.0, True)
    assert type(build_optimizer(model, _optim_cfg(name="lars"))) is LARS
    schedules = _schedules(cfg, epochs=2, steps_per_epoch=2, global_batch=256)
    weights, no_decay = split_decay_groups(model)
    everything = weights + no_decay
    start = [p.detach().numpy().copy() for p in everything]
    x = torch.randn(8, 3, dtype=torch.float64)
    grads_per_step = []
    for step in range(4):
        apply_schedules(opt, schedules, step, bias_lr_ratio=0.024)
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        grads_per_step.append([p.grad.numpy().copy() for p in everything])
        opt.step()
    lrs = list(schedules["lr"][:4])
    groups = [dict(idx=list(range(len(weights))), lr=lrs, momentum=0.9, wd=0.02, eta=0.01, exclude=False),
              dict(idx=list(range(len(weights), len(everything))), lr=[lr * 0.024 for lr in lrs], momentum=0.9,
                   wd=0.0, eta=0.01, exclude=True)]
    assert len(set(lrs)) == 4
    for p, e in zip(everything, reference_barlow_twins_lars(start, grads_per_step, groups)):
        np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-10, atol=1e-12)


# ---- parameter groups --------------------------------------------------------------------------------

class _TinyViTish(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 6)
        self.ln = nn.LayerNorm(6)
        self.out = nn.Linear(6, 2, bias=False)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_split_decay_groups():
    model = _TinyViTish()
    weights, no_decay = split_decay_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in weights) == ["conv.weight", "fc.weight", "out.weight"]
    assert sorted(names[id(p)] for p in no_decay) == ["bn.bias", "bn.weight", "cls_token", "fc.bias",
                                                      "ln.bias", "ln.weight", "pos_embed"]


def _optim_cfg(**changes):
    return OptimConfig(**{**DEFAULTS["optim"], **changes})


def _schedules(optim, epochs, steps_per_epoch, global_batch, **sections):
    """build_schedules with ``optim``, ``epochs`` and the changes to other sections; the rest keep their defaults."""
    cfg = {key: dict(value) if isinstance(value, dict) else value for key, value in DEFAULTS.items()}
    cfg["train"]["epochs"] = epochs
    for name, changes in sections.items():
        cfg[name].update(changes)
    section = dataclasses.replace(ScheduleConfig.from_config(cfg), optim=optim)
    return build_schedules(section, steps_per_epoch, global_batch)


def test_build_lars_groups():
    model = _TinyViTish()
    opt = build_optimizer(model, _optim_cfg(name="lars", weight_decay=0.03, momentum=0.8, lars_eta=0.005))
    assert isinstance(opt, LARS) and len(opt.param_groups) == 2
    g0, g1 = opt.param_groups
    weights, no_decay = split_decay_groups(model)
    assert [id(p) for p in g0["params"]] == [id(p) for p in weights]
    assert [id(p) for p in g1["params"]] == [id(p) for p in no_decay]
    assert (g0["weight_decay"], g0["lars_exclude"], g0["momentum"], g0["eta"]) == (0.03, False, 0.8, 0.005)
    assert (g1["weight_decay"], g1["lars_exclude"]) == (0.0, True)
    _, g1 = build_optimizer(model, _optim_cfg(weight_decay=0.03, exclude_bias_and_norm=False)).param_groups
    assert (g1["weight_decay"], g1["lars_exclude"]) == (0.03, False)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_build_sgd_and_adamw_with_two_groups(name, cls):
    model = _TinyViTish()
    opt = build_optimizer(model, _optim_cfg(name=name, weight_decay=0.04, momentum=0.7))
    assert type(opt) is cls and len(opt.param_groups) == 2
    g0, g1 = opt.param_groups
    assert len(g0["params"]) == 3 and len(g1["params"]) == 7
    assert g0["weight_decay"] == 0.04 and g1["weight_decay"] == 0.0
    assert "lars_exclude" not in g0 and "lars_exclude" not in g1
    if name == "sgd":
        assert g0["momentum"] == g1["momentum"] == 0.7
    # It steps (the trainer writes the lr before each step).
    for g in opt.param_groups:
        g["lr"] = 0.1
    before = model.fc.weight.detach().clone()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    opt.step()
    assert not torch.equal(before, model.fc.weight)


def test_build_unknown_optimizer():
    with pytest.raises(ValueError, match="optim.name must be lars, sgd, adam or adamw; got 'rmsprop'"):
        build_optimizer(_TinyViTish(), _optim_cfg(name="rmsprop"))


# ---- schedules ---------------------------------------------------------------------------------------

def test_lr_schedule_warmup_and_cosine():
    epochs, steps, batch = 6, 5, 512
    cfg = _optim_cfg(lr=0.3, warmup_epochs=2, final_lr_ratio=0.01, weight_decay=0.1, weight_decay_end=0.4)
    s = _schedules(cfg, epochs, steps, batch)
    lr, wd = s["lr"], s["weight_decay"]
    total, warm = epochs * steps, 2 * steps
    assert len(lr) == len(wd) == total
    peak, end = 0.3 * batch / 256, 0.3 * batch / 256 * 0.01
    assert lr[0] == 0.0
    for i in range(total):  # independent closed form
        if i < warm:
            expected = peak * i / warm
        else:
            expected = end + 0.5 * (peak - end) * (1 + math.cos(math.pi * (i - warm) / (total - warm)))
        assert lr[i] == pytest.approx(expected, rel=1e-12, abs=1e-15), i
    assert lr[warm] == pytest.approx(peak, rel=1e-12)
    assert lr.max() == pytest.approx(peak, rel=1e-12)
    assert np.all(np.diff(lr[:warm + 1]) > 0) and np.all(np.diff(lr[warm:]) < 0)
    # The half cosine stops one step short of its end value (as in DINO/Barlow Twins), so the last
    # lr is end + (peak - end) * (1 - cos(pi / n)) / 2 for n cosine steps: just above the end.
    n = total - warm
    assert lr[-1] > end and lr[-1] - end == pytest.approx((peak - end) * (1 - math.cos(math.pi / n)) / 2, rel=1e-9)
    # Weight decay: a half cosine from start to end over the whole run, no warmup.
    assert wd[0] == pytest.approx(0.1, rel=1e-12)
    assert wd[-1] == pytest.approx(0.4, rel=0.01) and np.all(np.diff(wd) > 0)
    for i in range(total):
        assert wd[i] == pytest.approx(0.4 + 0.5 * (0.1 - 0.4) * (1 + math.cos(math.pi * i / total)), rel=1e-12)


def test_lr_schedule_of_a_long_run_ends_near_peak_times_final_ratio():
    cfg = _optim_cfg(lr=0.5, warmup_epochs=10, final_lr_ratio=0.001)
    lr = _schedules(cfg, epochs=100, steps_per_epoch=50, global_batch=1024)["lr"]
    peak = 0.5 * 1024 / 256
    assert len(lr) == 5000 and lr[0] == 0.0 and lr[500] == pytest.approx(peak, rel=1e-12)
    assert lr[-1] == pytest.approx(peak * 0.001, rel=0.01)


def test_lr_schedule_without_warmup_and_with_warmup_past_the_end():
    s = _schedules(_optim_cfg(lr=0.5, warmup_epochs=0), epochs=2, steps_per_epoch=3, global_batch=256)
    assert len(s["lr"]) == 6 and s["lr"][0] == pytest.approx(0.5)
    s = _schedules(_optim_cfg(lr=0.5, warmup_epochs=10), epochs=2, steps_per_epoch=3, global_batch=256)
    np.testing.assert_allclose(s["lr"], 0.5 * np.arange(6) / 6, rtol=1e-12)


def test_constant_weight_decay():
    s = _schedules(_optim_cfg(weight_decay=1e-5, weight_decay_end=1e-5), 3, 4, 256)
    np.testing.assert_allclose(s["weight_decay"], 1e-5, rtol=1e-12)


@pytest.mark.parametrize("exclude", [True, False])
def test_apply_schedules_writes_lrs_and_group0_wd_only(exclude):
    model = _TinyViTish()
    cfg = _optim_cfg(weight_decay=0.01, weight_decay_end=0.05, exclude_bias_and_norm=exclude)
    opt = build_optimizer(model, cfg)
    schedules = _schedules(cfg, epochs=3, steps_per_epoch=4, global_batch=256)
    g1_wd = opt.param_groups[1]["weight_decay"]
    for step in (0, 5, 11):
        apply_schedules(opt, schedules, step, bias_lr_ratio=0.02)
        g0, g1 = opt.param_groups
        assert g0["lr"] == schedules["lr"][step]
        assert g1["lr"] == pytest.approx(schedules["lr"][step] * 0.02, rel=1e-15)
        assert g0["weight_decay"] == schedules["weight_decay"][step]
        assert g1["weight_decay"] == g1_wd == (0.0 if exclude else 0.01)
        assert all(type(v) is float for v in (g0["lr"], g1["lr"], g0["weight_decay"]))
    assert opt.param_groups[0]["weight_decay"] != 0.01  # it did move along the schedule


def test_built_lars_step_matches_reference():
    """build_optimizer + apply_schedules + step on a real module equals the reference formula."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    cfg = _optim_cfg(lr=0.4, weight_decay=0.02, weight_decay_end=0.02, momentum=0.9, lars_eta=0.01,
                     warmup_epochs=0)
    opt = build_optimizer(model, cfg)
    schedules = _schedules(cfg, epochs=1, steps_per_epoch=3, global_batch=256)
    weights, no_decay = split_decay_groups(model)
    everything = weights + no_decay
    start = [p.detach().numpy().copy() for p in everything]
    x = torch.randn(8, 3, dtype=torch.float64)
    grads_per_step, lrs = [], []
    for step in range(3):
        apply_schedules(opt, schedules, step, bias_lr_ratio=0.5)
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        grads_per_step.append([p.grad.numpy().copy() for p in everything])
        lrs.append(schedules["lr"][step])
        opt.step()
    # Replay with the reference step by step (the lr changes per step).
    params, state = start, {}
    for step, grads in enumerate(grads_per_step):
        groups = [dict(idx=list(range(len(weights))), lr=lrs[step], momentum=0.9, wd=0.02, eta=0.01, exclude=False),
                  dict(idx=list(range(len(weights), len(everything))), lr=lrs[step] * 0.5, momentum=0.9, wd=0.0,
                       eta=0.01, exclude=True)]
        params, state = _reference_step(params, grads, groups, state)
    for p, e in zip(everything, params):
        np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-10, atol=1e-12)


def _reference_step(params, grads, groups, bufs):
    """One step of the same formula as ``reference_lars``, with the momentum buffers carried in ``bufs``."""
    new = list(params)
    bufs = dict(bufs)
    for g_cfg in groups:
        for i in g_cfg["idx"]:
            p, g, wd = params[i], grads[i], g_cfg["wd"]
            p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
            ratio = 1.0 if (g_cfg["exclude"] or p_norm == 0 or g_norm == 0) else \
                g_cfg["eta"] * p_norm / (g_norm + wd * p_norm)
            u = (g + wd * p) * ratio * g_cfg["lr"]
            bufs[i] = u if i not in bufs else g_cfg["momentum"] * bufs[i] + u
            new[i] = p - bufs[i]
    return new, bufs


def test_self_labeling_restarts_the_lr_and_runs_the_quantile_schedule():
    """The reference's piecewise schedule (spec §6.3), written out independently."""
    epochs, n, batch = 10, 4, 512
    optim = _optim_cfg(lr=0.5, warmup_epochs=2, final_lr_ratio=0.001)
    s = _schedules(optim, epochs, n, batch,
                   self_label={"enabled": True, "start_epoch": 7, "lr": 0.05, "warmup_epochs": 1,
                               "quantile": 0.5, "quantile_end": 0.6})
    lr, q = s["lr"], s["quantile"]
    sw, sm, ss, total = 2 * n, 7 * n, 1 * n, epochs * n
    peak, peak_sl = 0.5 * batch / 256, 0.05 * batch / 256

    def cosfac(x):
        c = 0.5 * (1 + math.cos(math.pi * x))
        return c + 0.001 * (1 - c)

    for step in range(total):
        if step < sw:
            expected = peak * step / sw
        elif step < sm:
            expected = peak * cosfac((step - sw) / (sm - sw))
        elif step < sm + ss:
            expected = peak_sl * (step - sm) / ss
        else:
            expected = peak_sl * cosfac((step - sm - ss) / (total - sm - ss))
        assert lr[step] == pytest.approx(expected, rel=1e-9, abs=1e-15), step
    assert np.isnan(q[:sm]).all()
    assert q[sm] == pytest.approx(0.5) and q[-1] == pytest.approx(0.6, abs=0.01)
    assert np.all(np.diff(q[sm:]) > 0)
    assert len(s["momentum"]) == total  # the teacher's schedule covers every step of the run


# ---- the sections ----------------------------------------------------------------------------------

def test_the_optim_section_holds_every_key_of_optim_and_nothing_else():
    cfg = load_config(None, ["data.dataset=synthetic", "optim.name=sgd", "optim.lr=0.3", "optim.clip_grad_norm=1.5"])
    optim = OptimConfig.from_config(cfg)
    assert dataclasses.asdict(optim) == cfg["optim"]
    with pytest.raises(TypeError):
        OptimConfig.from_config({"optim": {**cfg["optim"], "lr_typo": 0.1}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        optim.lr = 0.1


def test_the_schedule_section_reads_the_run_length_the_self_label_stage_and_the_teacher():
    cfg = load_config(None, ["data.dataset=synthetic", "train.epochs=12", "self_label.enabled=true",
                             "self_label.start_epoch=9", "self_label.global_scale=[0.2, 1.0]",
                             "teacher.momentum_start=0.99"])
    section = ScheduleConfig.from_config(cfg)
    assert section.epochs == 12 and section.optim == OptimConfig.from_config(cfg)
    assert (section.self_label.enabled, section.self_label.start_epoch) == (True, 9)
    assert section.self_label.global_scale == (0.2, 1.0)  # a tuple: the section cannot change under the run
    assert (section.teacher.momentum_start, section.teacher.momentum_end) == (0.99, 1.0)
