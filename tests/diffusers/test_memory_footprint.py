"""diffusers' get_memory_footprint of a deployed model counts every byte once: the packed codes (the layer's
w_packed buffer), scales, tables and the unquantized layers, not the logical fp weight its `weight` view reports."""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel

import qvgen
from qvgen.apps.demo.metrics import model_bytes

# Linear layers dominate at this width (as in real models): diffusers asks a 4-bit backend for >= 3x less than fp32.
CFG = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64, in_channels=4, out_channels=4,
           text_dim=64, freq_dim=32, ffn_dim=1024, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads")


def test_footprint_counts_the_codes_once():
    torch.manual_seed(0)
    fp = WanTransformer3DModel(**CFG)
    q = qvgen.to_deploy(qvgen.quantize_model(WanTransformer3DModel(**CFG), qvgen.QuantConfig.preset("w4a4", rank=0)))
    assert q.num_parameters() == fp.num_parameters()  # the weight views stand for the fp weights they replace
    assert q.get_memory_footprint() <= model_bytes(q)  # nothing counted twice (model_bytes: each storage once)
    assert fp.get_memory_footprint() / q.get_memory_footprint() >= 3.0
