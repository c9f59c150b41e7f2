"""The GPU check's diffusers-free Wan block has the real block's parameters, and the QAT check runs on it."""

from __future__ import annotations

import builtins

import torch

from benchmarks import bench_qat_check
from benchmarks._wan_block import WanShapedBlock


def test_state_dict_of_diffusers_block_loads_strictly():
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    real = WanTransformerBlock(64, 96, 2, cross_attn_norm=True)
    mine = WanShapedBlock(64, 96, 2)
    mine.load_state_dict(real.state_dict(), strict=True)  # same names and shapes: the same nn.Linear layers
    linears = {n: tuple(m.weight.shape) for n, m in real.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears == {n: tuple(m.weight.shape) for n, m in mine.named_modules() if isinstance(m, torch.nn.Linear)}


def test_same_output_as_diffusers_block_without_rotary():
    # rotary of angle 0 (cos 1, sin 0) is the identity, which is what the torch block leaves out
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    torch.manual_seed(0)
    real = WanTransformerBlock(64, 96, 2, cross_attn_norm=True).eval()
    mine = WanShapedBlock(64, 96, 2).eval()
    mine.load_state_dict(real.state_dict())
    x, text, temb = torch.randn(1, 10, 64), torch.randn(1, 5, 64), torch.randn(1, 6, 64) * 0.1
    ones, zeros = torch.ones(1, 10, 1, 32), torch.zeros(1, 10, 1, 32)
    with torch.no_grad():
        want = real(x, text, temb, (ones, zeros))
        got = mine(x, text, temb)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # fp32, same ops in the same order


def test_qat_check_runs_without_diffusers(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_diffusers(name, *a, **k):  # the block's import, as on a machine without diffusers
        if name.startswith("diffusers.models"):
            raise ImportError("No module named 'diffusers'", name="diffusers")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_diffusers)
    out = bench_qat_check.main(["--smoke", "--out", str(tmp_path), "--repeats", "1", "--warmup", "0"])
    blocks = [r for r in out["rows"] if r["provider"].startswith("block:")]
    assert [r["block"] for r in blocks] == ["torch Wan-shaped (no rotary)"] * 2
    assert all("ms" in r for r in blocks)
