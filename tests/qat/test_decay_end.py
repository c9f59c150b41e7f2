"""RankDecay's decay_end: the stages share the first floor(decay_end * total_steps) steps, then the weights
train on without Phi; decay_end = 1 is the paper's schedule exactly; a resume across the end is exact."""

import pytest
import torch
from torch import nn

from qvgen import QuantConfig, RankDecay, iter_qlinears, quantize_model
from qvgen.quant.rank_decay import DEFAULT_DECAY_END, PAPER_DECAY_END


def _model(seed, rank=8):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(24, 20), nn.ReLU(), nn.Linear(20, 16))
    return quantize_model(m, QuantConfig.preset("w4a4", rank=rank, clip_groups=1))


def test_gamma_values_and_phi_gone_at_decay_end():
    m = _model(0, rank=8)  # 4 stages
    decay = RankDecay(m, total_steps=40, decay_end=0.5)  # 20 decay steps: T = 5, Phi gone at step 20
    assert decay.stage_len == 5 and decay.end_step == 20
    assert [decay.rank_at(i) for i in (0, 4, 5, 10, 15, 19, 20, 39)] == [8, 8, 4, 2, 1, 1, 0, 0]
    torch.testing.assert_close(decay.gamma_at(0), torch.ones(8))
    g = decay.gamma_at(7)  # stage 1 (rank 4), tau = 2 of 5: cosine u = (1 + cos(2 pi / 5)) / 2
    u = (1 + torch.cos(torch.tensor(2 * torch.pi / 5))) / 2
    torch.testing.assert_close(g, torch.tensor([1.0, 1.0, float(u), float(u)]))
    assert decay.gamma_at(20) is None
    for i in range(40):
        decay.step(i)
        if i == 19:
            assert all(q.phi_rank == 1 for _, q in iter_qlinears(m))
        if i == 20:  # removed in a single process: no Phi parameter left
            assert all(q.phi_l is None for _, q in iter_qlinears(m))
            assert not any("phi" in n for n, _ in m.named_parameters())


def test_paper_schedule_unchanged():
    """decay_end = 1 reproduces T = total_steps // stages (the schedule before decay_end existed)."""
    m = _model(1, rank=32)
    decay = RankDecay(m, total_steps=62, decay_end=PAPER_DECAY_END)
    assert decay.stage_len == 62 // 6 and decay.end_step == 60
    assert 0 < DEFAULT_DECAY_END <= 1 and RankDecay(_model(1, 4), total_steps=30).decay_end == DEFAULT_DECAY_END


def test_bad_decay_end_and_too_short():
    m = _model(2, rank=8)
    for bad in (0, 0.0, -0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="decay_end"):
            RankDecay(m, total_steps=40, decay_end=bad)
    short = RankDecay(m, total_steps=10, decay_end=0.3)  # 3 decay steps for 4 stages: one step each
    assert short.stage_len == 1 and short.end_step == 4
    with pytest.raises(ValueError, match="total_steps"):
        RankDecay(m, total_steps=3, decay_end=1.0)


def _train(model, decay, opt, steps, x):
    for i in steps:
        decay.step(i)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def test_exact_resume_across_decay_end():
    """Stop mid-stage before decay_end, resume in a fresh process state, train past it: bit-identical to an
    uninterrupted run; a state saved with another decay_end is refused."""
    x = torch.randn(6, 24, generator=torch.Generator().manual_seed(3))
    total, stop = 30, 8  # decay_end 0.4: 12 decay steps, T = 3, Phi gone at step 12

    ref = _model(4)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    _train(ref, RankDecay(ref, total_steps=total, optimizer=opt, decay_end=0.4), opt, range(total), x)

    first = _model(4)
    opt1 = torch.optim.AdamW(first.parameters(), lr=1e-2)
    d1 = RankDecay(first, total_steps=total, optimizer=opt1, decay_end=0.4)
    _train(first, d1, opt1, range(stop), x)
    model_sd, opt_sd, decay_sd = first.state_dict(), opt1.state_dict(), d1.state_dict()

    resumed = _model(4)
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    d2 = RankDecay(resumed, total_steps=total, optimizer=opt2, decay_end=0.4)
    resumed.load_state_dict(model_sd)
    opt2.load_state_dict(opt_sd)
    d2.load_state_dict(decay_sd)
    with pytest.raises(ValueError, match="decay_end"):
        RankDecay(_model(4), total_steps=total, decay_end=0.5).load_state_dict(decay_sd)
    _train(resumed, d2, opt2, range(stop, total), x)
    assert all(q.phi_l is None for _, q in iter_qlinears(resumed))
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_old_state_without_decay_end_is_the_paper_schedule():
    m = _model(5, rank=4)
    sd = RankDecay(m, total_steps=30, decay_end=1.0).state_dict()
    del sd["decay_end"]
    RankDecay(_model(5, rank=4), total_steps=30, decay_end=1.0).load_state_dict(sd)
    with pytest.raises(ValueError, match="decay_end"):
        RankDecay(_model(5, rank=4), total_steps=30, decay_end=0.5).load_state_dict(sd)


def test_train_config_and_cli_carry_decay_end():
    from qvgen.apps.cli import build_parser
    from qvgen.train import TrainConfig

    assert TrainConfig().decay_end == DEFAULT_DECAY_END
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="decay_end"):
            TrainConfig(decay_end=bad)
    args = build_parser().parse_args(["train", "--model", "m", "--decay-end", "1.0"])
    assert args.decay_end == 1.0
