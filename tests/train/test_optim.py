"""Optimizer groups (clip logits at their own lr), the warmup-cosine schedule and gradient clipping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qvgen.train.optim import (GROUPS, build_optimizer, build_scheduler, clip_gradients, group_of, param_groups,
                               warmup_cosine)


class _Quant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.zero = nn.Parameter(torch.zeros(3))


class _Act(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.clip_lo_logit = nn.Parameter(torch.full((4,), 2.0))
        self.clip_hi_logit = nn.Parameter(torch.full((4,), 2.0))


class _Layer(nn.Module):
    """Parameter names as the frontend's QLinear registers them."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 5))
        self.bias = nn.Parameter(torch.zeros(3))
        self.weight_quant = _Quant()
        self.act_quant = _Act()
        self.phi_l = nn.Parameter(torch.randn(3, 2))
        self.phi_r = nn.Parameter(torch.randn(2, 5))
        self.norm = nn.LayerNorm(5)
        self.frozen = nn.Parameter(torch.ones(1), requires_grad=False)


def test_group_of_names():
    assert group_of("blocks.0.attn1.to_q.act_quant.clip_lo_logit") == "clip"
    assert group_of("proj_out.act_quant.clip_hi_logit") == "clip"
    assert group_of("blocks.1.ffn.net.2.phi_l") == "phi"
    assert group_of("x.phi_r") == "phi"
    assert group_of("to_k.weight_quant.scale") == "quant"
    assert group_of("to_k.weight_quant.zero") == "quant"
    # Look-alikes stay in "other": suffixes match on name boundaries only.
    for name in ("scale_shift_table", "norm.scale", "alpha_phi_l", "to_q.weight", "to_q.bias"):
        assert group_of(name) == "other"


def test_param_groups_and_lrs():
    layer = _Layer()
    groups = param_groups(layer, lr=3e-5, clip_lr=1e-2, phi_lr=1e-4, weight_decay=1e-4)
    assert [g["name"] for g in groups] == list(GROUPS)
    by = {g["name"]: g for g in groups}
    assert by["clip"]["params"] == [layer.act_quant.clip_lo_logit, layer.act_quant.clip_hi_logit]
    assert by["phi"]["params"] == [layer.phi_l, layer.phi_r]
    assert by["quant"]["params"] == [layer.weight_quant.scale, layer.weight_quant.zero]
    assert by["other"]["params"] == [layer.weight, layer.bias, layer.norm.weight, layer.norm.bias]
    assert (by["clip"]["lr"], by["phi"]["lr"], by["quant"]["lr"], by["other"]["lr"]) == (1e-2, 1e-4, 3e-5, 3e-5)
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    assert not any(p is layer.frozen for g in groups for p in g["params"])


def test_clip_logits_move_at_clip_lr():
    torch.manual_seed(0)
    layer = _Layer()
    opt = build_optimizer(layer, lr=3e-5, clip_lr=1e-2)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    for p in layer.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape) + 3.0  # nonzero grads of either sign
    opt.step()
    # Adam's first bias-corrected step is lr * g / (|g| + eps') = lr * sign(g), plus decoupled weight decay
    # lr * wd * p. Reading the step back as a difference of fp32 values of size |p| <= ~8 costs up to
    # one ulp there (~1e-6 absolute), which still separates 3e-5 from 1e-2 by orders of magnitude.
    for name, p in layer.named_parameters():
        if not p.requires_grad:
            continue
        lr = 1e-2 if "clip" in name else 3e-5
        step = before[name] * (1 - lr * 1e-4) - p.detach()
        torch.testing.assert_close(step, lr * torch.sign(p.grad), rtol=0, atol=1e-6)


def test_warmup_cosine_values():
    f = warmup_cosine(100, 10)
    assert [f(i) for i in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert f(10) == 1.0
    assert math.isclose(f(55), 0.5, rel_tol=1e-12)  # halfway through the cosine
    assert math.isclose(f(99), 0.5 * (1 + math.cos(math.pi * 89 / 90)), rel_tol=1e-12)
    assert warmup_cosine(5, 0)(0) == 1.0
    opt = build_optimizer(_Layer(), lr=1.0, clip_lr=2.0)
    sched = build_scheduler(opt, total_steps=20, warmup=0.1)
    lrs = []
    for _ in range(20):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0] == [1.0, 0.5, 0.5, 0.5]  # clip group keeps its 2x ratio to the base lr
    assert lrs[1] == [2.0, 1.0, 1.0, 1.0]
    assert all(a[0] >= b[0] for a, b in zip(lrs[2:], lrs[3:]))


def test_clip_gradients_matches_torch():
    torch.manual_seed(1)
    params = [nn.Parameter(torch.randn(s)) for s in ((3, 4), (7,), (1,), (2, 2, 2))]
    for p in params:
        p.grad = torch.randn(p.shape) * 5
    ref = [p.grad.clone() for p in params]
    twins = [nn.Parameter(torch.zeros_like(g)) for g in ref]
    for t, g in zip(twins, ref):
        t.grad = g.clone()
    ref_norm = torch.nn.utils.clip_grad_norm_(twins, 1.0)
    expected = torch.sqrt(sum(g.pow(2).sum() for g in ref))
    norm = clip_gradients(params, 1.0)
    # Both the stacked-norm and the direct sum of squares agree to fp32 rounding (1e-6 relative).
    assert math.isclose(norm, float(expected), rel_tol=1e-6) and math.isclose(norm, float(ref_norm), rel_tol=1e-6)
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in params))
    torch.testing.assert_close(total, torch.tensor(1.0), rtol=1e-5, atol=0)
    small = [nn.Parameter(torch.ones(2))]
    small[0].grad = torch.full((2,), 0.1)
    assert math.isclose(clip_gradients(small, 1.0), math.sqrt(0.02), rel_tol=1e-6)
    assert torch.equal(small[0].grad, torch.full((2,), 0.1))  # below the threshold: untouched
    assert clip_gradients([nn.Parameter(torch.ones(1))], 1.0) == 0.0  # no grads at all


def test_bad_arguments():
    with pytest.raises(ValueError, match="clip learning rate"):
        param_groups(_Layer(), lr=1e-3, clip_lr=-1.0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_gradients([], 0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(10, 11)
    with pytest.raises(ValueError, match="warmup"):
        build_scheduler(build_optimizer(_Layer()), 10, warmup=1.5)
    with pytest.raises(ValueError, match="at least one parameter"):
        build_optimizer(nn.Linear(2, 2).requires_grad_(False))
