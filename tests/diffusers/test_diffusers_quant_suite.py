"""The checks of diffusers' shared quantization tests (tests/models/testing_utils/quantization.py), adapted to
qvgen: tiny Flux and Wan transformers as diffusers' model tests build them, W4A8 and W4A4, on the CPU.
Compile, LoRA and offload checks are in test_diffusers_conformance.py; deliberate differences are listed in
docs/diffusers.md."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

import qvgen
from qvgen.quant.deployed import DeployedLinear

PRESETS = ("w4a8", "w4a4")
KINDS = ("flux", "wan")


def fp_model(kind: str) -> nn.Module:
    import diffusers

    torch.manual_seed(0)
    if kind == "flux":
        return diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval()
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32).eval()


def inputs(kind: str) -> dict:
    g = torch.Generator().manual_seed(1)
    if kind == "flux":
        return {"hidden_states": torch.randn(1, 16, 4, generator=g),
                "encoder_hidden_states": torch.randn(1, 8, 32, generator=g),
                "pooled_projections": torch.randn(1, 32, generator=g), "timestep": torch.tensor([0.7]),
                "img_ids": torch.randn(16, 3, generator=g), "txt_ids": torch.randn(8, 3, generator=g),
                "return_dict": False}
    return {"hidden_states": torch.randn(1, 4, 2, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(1, 8, 16, generator=g), "timestep": torch.tensor([700]),
            "return_dict": False}


def run(model: nn.Module, kind: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(kind))[0]


def quantized(kind: str, preset: str, **fields) -> nn.Module:
    cfg = qvgen.QuantConfig.preset(preset, rank=0, **fields)
    return qvgen.to_deploy(qvgen.quantize_model(fp_model(kind), cfg))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One saved folder per (kind, preset), with the model that was saved."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for kind in KINDS:
        for preset in PRESETS:
            model = quantized(kind, preset)
            model.save_pretrained(root / f"{kind}-{preset}")
            out[kind, preset] = (model, root / f"{kind}-{preset}")
    return out


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("kind", KINDS)
def test_inference_and_layer_coverage(kind, preset):
    """Every Linear is quantized except diffusers' keep-in-fp32 modules; the output is finite and close to FP."""
    fp = fp_model(kind)
    model = quantized(kind, preset)
    keep = set(type(model)._keep_in_fp32_modules or ())
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and not isinstance(m, (qvgen.QLinear, DeployedLinear)):
            assert keep.intersection(name.split(".")), f"{name} left unquantized"
    assert sum(1 for _ in qvgen.iter_qlinears(model)) > 0
    out, ref = run(model, kind), run(fp, kind)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert float((out - ref).norm() / ref.norm()) < (0.5 if preset == "w4a8" else 1.5)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_exact(kind, preset, saved):
    """qvgen's class and diffusers' own class both load the folder; outputs equal the saved model's (max diff 0)."""
    import diffusers

    model, path = saved[kind, preset]
    config = json.loads((path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "qvgen"
    ours = type(model).from_pretrained(path)
    plain = getattr(diffusers, type(model).__name__.removeprefix("Quantized")).from_pretrained(path)
    assert ours.config._pre_quantization_dtype == torch.float32
    assert "_pre_quantization_dtype" in plain.config  # None: qvgen applies the dtype itself (docs/diffusers.md)
    for loaded in (ours, plain):
        assert loaded.is_quantized and loaded.hf_quantizer.quantization_config.quant_method == "qvgen"
        assert loaded.state_dict().keys() == model.state_dict().keys()
        for key, t in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], t), key
    assert torch.equal(run(ours, kind), run(model, kind))


def test_corrupted_state_dict_is_refused(saved):
    model, path = saved["wan", "w4a8"]
    copy = path.parent / "corrupt"
    copy.mkdir()
    for f in path.iterdir():
        data = bytearray(f.read_bytes())
        if f.suffix == ".safetensors":
            data[-3] ^= 0xFF  # a flipped bit in the last tensor's data
        (copy / f.name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256|hash|differ"):
        type(model).from_pretrained(copy)


def test_modules_to_not_convert_matches_substrings():
    """"proj_out" keeps single_transformer_blocks.0.proj_out too, as diffusers' backends match; skip stays
    a whole-name fnmatch."""
    model = quantized("flux", "w4a8", modules_to_not_convert=("proj_out",))
    assert type(model.proj_out) is nn.Linear and type(model.single_transformer_blocks[0].proj_out) is nn.Linear
    model = quantized("flux", "w4a8", skip=("proj_out",))
    assert type(model.proj_out) is nn.Linear
    assert isinstance(model.single_transformer_blocks[0].proj_out, DeployedLinear)


def test_keep_in_fp32_and_dtype_on_load(saved):
    import diffusers

    _, path = saved["wan", "w4a8"]
    loaded = diffusers.WanTransformer3DModel.from_pretrained(path, torch_dtype=torch.bfloat16)
    assert type(loaded.condition_embedder.time_embedder.linear_1) is nn.Linear
    assert loaded.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    layer = loaded.blocks[0].attn1.to_q
    assert layer.compute_dtype == torch.bfloat16 and layer.w_scale.dtype == torch.float32


def test_quantization_config_on_load_quantizes(tmp_path):
    """from_pretrained(quantization_config=qvgen.QuantConfig) on an FP checkpoint, as with other backends."""
    import diffusers

    fp_model("wan").save_pretrained(tmp_path / "fp")
    model = diffusers.WanTransformer3DModel.from_pretrained(
        tmp_path / "fp", quantization_config=qvgen.QuantConfig.preset("w4a8", rank=0))
    assert isinstance(model.blocks[0].attn1.to_q, DeployedLinear) and model.is_quantized
    model.save_pretrained(tmp_path / "q")
    again = diffusers.WanTransformer3DModel.from_pretrained(tmp_path / "q")
    assert torch.equal(run(again, "wan"), run(qvgen.QuantizedWanTransformer3DModel.from_pretrained(tmp_path / "q"),
                                              "wan"))


def test_dequantize(saved):
    model, path = saved["flux", "w4a8"]
    loaded = type(model).from_pretrained(path)
    ref = run(loaded, "flux")
    plain = loaded.dequantize()
    assert not any(isinstance(m, (qvgen.QLinear, DeployedLinear)) for m in plain.modules())
    assert type(plain).__name__ == "FluxTransformer2DModel" and not plain.is_quantized
    # Activations are no longer quantized: close, not equal.
    assert float((run(plain, "flux") - ref).norm() / ref.norm()) < 0.5


def test_device_map(saved):
    model, path = saved["wan", "w4a8"]
    for device_map in ("cpu", "auto", {"": "cpu"}):
        loaded = type(model).from_pretrained(path, device_map=device_map)
        assert loaded.hf_device_map == {"": "cpu"}
    with pytest.raises(ValueError, match="device_map"):
        type(model).from_pretrained(path, device_map={"blocks.0": "cpu", "blocks.1": "disk"})


def test_keywords_qvgen_cannot_honour_are_refused(saved, tmp_path):
    model, path = saved["wan", "w4a8"]
    with pytest.raises(ValueError, match="variant"):
        type(model).from_pretrained(path, variant="fp16")
    with pytest.raises(ValueError, match="low_cpu_mem_usage"):
        type(model).from_pretrained(path, low_cpu_mem_usage=False)
    with pytest.raises(ValueError, match="variant"):
        model.save_pretrained(tmp_path / "v", variant="fp16")
    with pytest.raises(ValueError, match="max_shard_size"):
        model.save_pretrained(tmp_path / "s", max_shard_size="1KB")
    model.save_pretrained(tmp_path / "s", max_shard_size="10GB")  # holds the whole model: one file
    with pytest.raises(ValueError, match="fuse_lora"):
        model.fuse_lora()


def test_push_to_hub_offline(saved, tmp_path, monkeypatch):
    """The folder is written, the upload is asked for with diffusers' arguments, and a failed upload is an
    error naming the repository (never a silent None)."""
    import huggingface_hub

    model, _ = saved["wan", "w4a8"]
    calls = []
    monkeypatch.setattr(huggingface_hub, "create_repo",
                        lambda repo_id, **kw: calls.append(("create", repo_id, kw)) or type("R", (), {"repo_id": repo_id}))
    monkeypatch.setattr(type(model), "_upload_folder", lambda self, folder, repo_id, **kw: calls.append(
        ("upload", sorted(os.listdir(folder)), repo_id, kw)))
    model.save_pretrained(tmp_path / "h", push_to_hub=True, repo_id="me/tiny", private=True, commit_message="m")
    assert calls[0] == ("create", "me/tiny", {"exist_ok": True, "private": True, "token": None})
    assert calls[1][1] == ["config.json", "diffusion_pytorch_model.safetensors", "qvgen.json"]
    assert calls[1][3]["commit_message"] == "m"

    def offline(repo_id, **kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "create_repo", offline)
    with pytest.raises(OSError, match="me/tiny.*no network"):
        model.save_pretrained(tmp_path / "h2", push_to_hub=True, repo_id="me/tiny")
    assert (tmp_path / "h2" / "qvgen.json").is_file()
    with pytest.raises(OSError, match="me/tiny"):
        type(model).from_pretrained("me/tiny", local_files_only=True)


def test_saved_folder_follows_umask(saved, tmp_path):
    model, _ = saved["wan", "w4a8"]
    old = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "shared")
        qvgen.save_quantized(model, tmp_path / "plain")
    finally:
        os.umask(old)
    for folder in (tmp_path / "shared", tmp_path / "plain"):
        assert folder.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("kind", KINDS)
def test_num_parameters_and_weight_readable(kind):
    fp = fp_model(kind)
    model = quantized(kind, "w4a8")
    layer = next(q for _, q in qvgen.iter_qlinears(model))
    assert layer.weight is not None and layer.weight.shape == (layer.out_features, layer.in_features)
    assert model.num_parameters() == fp.num_parameters()
