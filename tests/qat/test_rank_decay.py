import math

import pytest
import torch
from torch import nn

from qvgen import QuantConfig, RankDecay, iter_qlinears, quantize_model
from qvgen.quant.rank_decay import PAPER_DECAY_END as PAPER


def _model(gen, rank=32, **kw):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = nn.Sequential(nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 36))
    return quantize_model(m, QuantConfig.preset("w4a4", rank=rank, clip_groups=1, **kw))


def test_rank_schedule_and_removal(gen):
    m = _model(gen)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    decay = RankDecay(m, decay_end=PAPER, total_steps=62, optimizer=opt)  # T = 62 // 6 = 10; Phi gone at step 60
    assert decay.stage_len == 10 and decay.end_step == 60
    expected = {0: 32, 9: 32, 10: 16, 20: 8, 30: 4, 40: 2, 49: 2, 50: 1, 59: 1, 60: 0, 61: 0}
    for i in range(62):
        decay.step(i)
        if i in expected:
            assert decay.current_rank == expected[i]
            assert all(q.phi_width == expected[i] for _, q in iter_qlinears(m))
    names = [n for n, _ in m.named_parameters()]
    assert not any("phi" in n for n in names)
    opt_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert opt_ids == {id(p) for p in m.parameters()}
    assert all(id(p) in opt_ids for p in opt.state)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_gamma_values(gen, schedule):
    m = _model(gen, rank=8)
    decay = RankDecay(m, decay_end=PAPER, total_steps=40, schedule=schedule)  # 4 stages, T = 10
    q = m[0]
    for i in (0, 3, 10, 17, 34):
        decay.step(i)
        tau = i % 10
        u = (1 + math.cos(math.pi * tau / 10)) / 2 if schedule == "cosine" else 1 - tau / 10
        r = 8 >> (i // 10)
        want = [1.0] * (r // 2) + [u] * (r - r // 2) + [0.0] * (8 - r)  # zero-padded to the capacity
        # gamma is fp32: 1e-7 absolute.
        torch.testing.assert_close(q.phi_gamma, torch.tensor(want), rtol=0, atol=1e-7)


def test_boundary_resvd_keeps_product_and_resets_state(gen):
    m = _model(gen, rank=8)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    decay = RankDecay(m, decay_end=PAPER, total_steps=40, optimizer=opt)
    decay.step(9)
    set_timestep_free = torch.randn(4, 48, generator=gen)
    m(set_timestep_free).sum().backward()
    opt.step()
    q = m[0]
    l_param, r_param = q.phi_l, q.phi_r
    assert l_param in opt.state and q.weight in opt.state
    with torch.no_grad():
        kept = (q.phi_l[:, :4].double() @ q.phi_r[:4].double())
    decay.step(10)
    assert q.phi_l is l_param and q.phi_l.shape == (40, 8) and q.phi_width == 4  # same Parameter, masked
    assert not q.phi_l[:, 4:].any() and not q.phi_r[4:].any() and not q.phi_gamma[4:].any()
    # The re-split reproduces the kept half's product to fp32 rounding (1e-5 of its largest entry).
    torch.testing.assert_close((q.phi_l @ q.phi_r).double(), kept, rtol=0,
                               atol=1e-5 * float(kept.abs().max()))
    for prm in (l_param, r_param):  # moments and step reset in place (a fresh Adam state)
        assert all(not v.any() for v in opt.state[prm].values())
    assert q.weight in opt.state and opt.state[q.weight]["exp_avg"].any()
    m(set_timestep_free).sum().backward()
    opt.step()  # Adam restarts its moments with the new shapes


def test_idempotent_and_jump(gen):
    m = _model(gen, rank=4)
    decay = RankDecay(m, decay_end=PAPER, total_steps=30)  # T = 10
    decay.step(12)
    snap = {k: v.clone() for k, v in m.state_dict().items()}
    decay.step(12)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in snap.items())
    decay.step(25)  # jumps over the 2 -> 1 boundary
    assert m[0].phi_width == 1
    with pytest.raises(ValueError, match="'i'"):
        decay.step(5)


def test_state_dict_resume(gen):
    m = _model(gen, rank=8)
    decay = RankDecay(m, decay_end=PAPER, total_steps=40, schedule="linear")
    for i in range(23):
        decay.step(i)
    model_sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd = decay.state_dict()
    fresh = _model(gen, rank=8)
    fresh.load_state_dict(model_sd)
    assert fresh[2].phi_width == 2
    d2 = RankDecay(fresh, decay_end=PAPER, total_steps=40, schedule="linear")
    d2.load_state_dict(sd)
    assert d2.current_rank == 2 and d2.last_step == 22
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model_sd.items())
    with pytest.raises(ValueError, match="schedule"):
        RankDecay(fresh, decay_end=PAPER, total_steps=40).load_state_dict(sd)


def test_errors_and_rank_zero(gen):
    with pytest.raises(ValueError, match="power of two"):
        RankDecay(_model(gen, rank=12), total_steps=100)
    with pytest.raises(ValueError, match="total_steps"):
        RankDecay(_model(gen, rank=32), total_steps=5)
    with pytest.raises(ValueError, match="schedule"):
        RankDecay(_model(gen, rank=2), total_steps=5, schedule="step")
    with pytest.raises(ValueError, match="QLinear"):
        RankDecay(nn.Linear(2, 2), total_steps=5)
    m = _model(gen, rank=0)
    d = RankDecay(m, decay_end=PAPER, total_steps=10)
    d.step(3)
    assert d.current_rank == 0 and m[0].phi_l is None


@pytest.mark.parametrize("rank,total", [(4, 12), (2, 7), (0, 5)])
def test_finish_after_plain_loop_allows_deploy(gen, rank, total):
    """With total_steps a multiple of the stage count, the last loop step still holds Phi; finish()
    removes it (from the model and the optimizer) so to_deploy works."""
    from qvgen import to_deploy

    m = _model(gen, rank=rank)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    decay = RankDecay(m, decay_end=PAPER, total_steps=total, optimizer=opt)
    for i in range(total):
        decay.step(i)
    if rank and total % decay.num_stages == 0:
        assert all(q.phi_rank > 0 for _, q in iter_qlinears(m))
        with pytest.raises(ValueError, match=r"finish\(\)"):
            to_deploy(m)
    decay.finish()
    decay.finish()  # idempotent
    assert decay.current_rank == 0
    assert not any("phi" in n for n, _ in m.named_parameters())
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in m.parameters()}
    to_deploy(m)
    assert all(q.mode == "deploy" for _, q in iter_qlinears(m))


def test_gamma_shared_per_device_copy(gen):
    """Every layer gets the same gamma values for a step (the per-device copy is shared, not aliased)."""
    m = _model(gen, rank=8)
    decay = RankDecay(m, decay_end=PAPER, total_steps=40, schedule="linear")
    decay.step(13)
    want = decay.gamma_at(13)
    gammas = [q.phi_gamma for _, q in iter_qlinears(m)]
    for g in gammas:
        torch.testing.assert_close(g[:want.numel()], want, rtol=0, atol=0)  # a copy: exact
    assert gammas[0].data_ptr() != gammas[1].data_ptr()


def test_previous_loss_alive_across_boundaries(gen):
    """A plain loop that keeps the previous step's loss (and so its graph) alive runs through every stage
    boundary and the removal of Phi: no Parameter changes shape or identity while training."""
    m = _model(gen, rank=8)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    decay = RankDecay(m, decay_end=PAPER, total_steps=10, optimizer=opt)  # 4 stages, T = 2, Phi gone at step 8
    phi = (m[0].phi_l, m[0].phi_r)
    x = torch.randn(6, 48, generator=gen)
    prev = None
    for i in range(10):
        decay.step(i)
        if i < decay.end_step:
            assert m[0].phi_l is phi[0] and m[0].phi_r is phi[1] and m[0].phi_l.shape == (40, 8)
        opt.zero_grad()
        loss = m(x).square().mean()
        loss.backward()
        opt.step()
        assert prev is None or prev.grad_fn is not None  # the previous graph stays referenced
        prev = loss
    assert m[0].phi_l is None
    decay.finish()
    assert not any("phi" in n for n, _ in m.named_parameters())


def test_masked_columns_stay_zero_and_get_zero_grad(gen):
    m = _model(gen, rank=8)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    decay = RankDecay(m, decay_end=PAPER, total_steps=40, optimizer=opt)
    x = torch.randn(5, 48, generator=gen)
    for i in (10, 11, 12):
        decay.step(i)
        opt.zero_grad()
        m(x).sum().backward()
        q = m[0]
        assert not q.phi_l.grad[:, 4:].any() and not q.phi_r.grad[4:].any()
        assert q.phi_l.grad[:, :4].any()
        opt.step()
        assert not q.phi_l[:, 4:].any() and not q.phi_r[4:].any()


def test_loads_older_narrower_checkpoint(gen):
    """Checkpoints written when Phi shrank in place hold [N, w] factors: zero-padded into the capacity."""
    m = _model(gen, rank=8)
    decay = RankDecay(m, decay_end=PAPER, total_steps=40)
    decay.step(25)  # width 2, gamma mid-stage
    x = torch.randn(3, 48, generator=gen)
    with torch.no_grad():
        ref = m(x)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    for k in [k for k in sd if k.endswith(("phi_l", "phi_gamma"))]:
        sd[k] = sd[k][..., :2]
    for k in [k for k in sd if k.endswith("phi_r")]:
        sd[k] = sd[k][:2]
    fresh = _model(gen, rank=8)
    phi_l = fresh[0].phi_l
    fresh.load_state_dict(sd)
    assert fresh[0].phi_l is phi_l and fresh[0].phi_width == 2 and fresh[0].phi_capacity == 8
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), ref, rtol=0, atol=0)


def test_drop_in_without_timestep(gen):
    """A QLinear in a model without a diffusion timestep uses one clip group (group 0), both when swapped
    in by hand and through quantize_model; in a DiT (forward takes `timestep`) a missing one is an error."""
    from qvgen import QLinear, set_timesteps

    from qat_helpers import ToyDiT

    cfg = QuantConfig.preset("w4a4", rank=4)  # 50 clip groups
    seq = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 8))
    seq[0] = QLinear.from_linear(seq[0], cfg)
    x = torch.randn(3, 12, generator=gen)
    y = seq(x)
    set_timesteps(seq[0], 0)
    assert torch.equal(seq(x), y)
    quantized = quantize_model(nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 8)), cfg)
    assert quantized(x).shape == (3, 8)
    dit = quantize_model(ToyDiT(), QuantConfig.preset("w4a4", rank=4, clip_groups=5))
    with pytest.raises(ValueError, match="none set"):
        dit.proj_out(torch.randn(2, 4, 24, generator=gen))
