"""Diffusers video transformers beyond the three tiny reference ones: Wan-VACE, SkyReels-V2, LTX-Video and
Mochi train through their adapters (chosen by class), condition keys are passed through, and an unknown
model gets an error that says what to pass."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import qvgen
from qvgen.models import adapter_for
from qvgen.train import Distiller, TrainConfig, random_data_fn

WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
           text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
           qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
# class name -> (constructor kwargs, adapter name, latent (F, H, W))
TINY = {
    "WanVACETransformer3DModel": (dict(WAN, vace_layers=[0], vace_in_channels=6), "wan-vace", (1, 4, 4)),
    "SkyReelsV2Transformer3DModel": (WAN, "wan", (1, 4, 4)),
    "LTXVideoTransformer3DModel": (dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
                                        num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                        num_layers=1, caption_channels=16), "ltx", (2, 4, 4)),
    "MochiTransformer3DModel": (dict(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                     pooled_projection_dim=16, in_channels=4, text_embed_dim=16, time_embed_dim=4,
                                     activation_fn="swiglu", max_sequence_length=16), "diffusers", (2, 4, 4)),
}


def _build(cls_name: str) -> nn.Module:
    import diffusers

    torch.manual_seed(0)
    return getattr(diffusers, cls_name)(**TINY[cls_name][0]).eval()


@pytest.mark.parametrize("cls_name", sorted(TINY))
def test_trains_through_its_adapter(cls_name, tmp_path):
    teacher = _build(cls_name)
    student = qvgen.quantize_model(copy.deepcopy(teacher), qvgen.QuantConfig.preset("w4a4", rank=2))
    adapter = adapter_for(student)
    assert adapter.name == TINY[cls_name][1]
    data_fn = random_data_fn(adapter, student, 1, *TINY[cls_name][2], text_len=3)
    cfg = TrainConfig(steps=2, lr=1e-3, warmup=0.0, progress=False, out_dir=str(tmp_path))
    summary = Distiller(student, teacher, adapter, data_fn, cfg).run()
    log = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["rank"] for r in log] == [2, 1] and summary["rank"] == 0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    x0, cond = data_fn(0, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert adapter.forward(student, x0, torch.tensor([500]), cond).shape == x0.shape


def test_unknown_condition_keys_reach_the_model():
    """VACE's control signal is passed through (it changes the output) instead of being dropped."""
    model = _build("WanVACETransformer3DModel")
    adapter = adapter_for(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 1, 4, 4, generator=g)
    cond = adapter.random_cond(model, 1, g, text_len=3)
    with torch.no_grad():
        base = adapter.forward(model, x, torch.tensor([400]), cond)
        control = torch.randn(1, 6, 1, 4, 4, generator=g)
        steered = adapter.forward(model, x, torch.tensor([400]),
                                  dict(cond, control_hidden_states=control, control_hidden_states_scale=torch.tensor([3.0])))
    assert not torch.allclose(base, steered)


def test_unknown_model_error_says_what_to_pass():
    class MyDiT(nn.Module):
        def forward(self, hidden_states, timestep, encoder_hidden_states):
            return hidden_states

    with pytest.raises(TypeError, match=r"--arch.*'diffusers'.*got MyDiT"):
        adapter_for(MyDiT())
    assert adapter_for(MyDiT(), "diffusers").name == "diffusers"
    with pytest.raises(ValueError, match="arch"):
        adapter_for(MyDiT(), "nope")
