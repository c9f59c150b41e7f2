"""diffusers-native loading and saving: a quantized transformer and a whole pipeline load with diffusers' own
from_pretrained (built on meta), round-trip bit-identical frames, and never load silently wrong."""

from __future__ import annotations

import json

import pytest
import torch

import qvgen
from tiny_pipes import CALL, PROMPT, aligned, fp_pipeline_dir, quantize, transformer

KINDS = ("wan", "cogvideox")


@pytest.fixture(scope="module")
def pipes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("pipes")
    return {kind: fp_pipeline_dir(root / kind, kind) for kind in KINDS}


def _frames(pipe, kind: str) -> torch.Tensor:
    return pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="pt", **CALL[kind]).frames


def _inputs(kind: str) -> dict:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 2, 8, 8, generator=g) if kind == "wan" else torch.randn(1, 2, 4, 4, 4, generator=g)
    return {"hidden_states": x, "encoder_hidden_states": torch.randn(1, 8, 16, generator=g),
            "timestep": torch.tensor([700]), "return_dict": False}


@pytest.mark.parametrize("kind", KINDS)
def test_transformer_round_trip_on_meta(kind, tmp_path, monkeypatch):
    model = quantize(transformer(kind))
    assert type(model).__name__ == "Quantized" + type(transformer(kind)).__name__
    model.save_pretrained(tmp_path / "t")
    assert json.loads((tmp_path / "t" / "config.json").read_text())["_class_name"] == type(model).__name__
    # The model is built with its parameters on meta: nothing of the FP architecture is initialised.
    built = []
    orig = torch.nn.Linear.reset_parameters
    monkeypatch.setattr(torch.nn.Linear, "reset_parameters",
                        lambda self: built.append(self.weight.is_meta) or orig(self))
    loaded = type(model).from_pretrained(tmp_path / "t")
    assert built and all(built)
    with torch.no_grad():
        assert torch.equal(loaded(**_inputs(kind))[0], model(**_inputs(kind))[0])
    assert not any(t.is_meta for t in (*loaded.parameters(), *loaded.buffers()))


@pytest.mark.parametrize("kind", KINDS)
def test_pipeline_save_load_bit_identical(kind, pipes, tmp_path):
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(pipes[kind])
    pipe.transformer = aligned(quantize(pipe.transformer))  # Wan's time_embedder stays FP, see aligned
    ref = _frames(pipe, kind)
    pipe.save_pretrained(tmp_path / "q")
    index = json.loads((tmp_path / "q" / "model_index.json").read_text())
    assert index["transformer"] == ["qvgen", type(pipe.transformer).__name__]
    again = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "q")
    assert isinstance(again.transformer, qvgen.artifact.pretrained.QuantizedModelMixin)
    assert torch.equal(_frames(again, kind), ref)


def test_plain_class_loads_quantized_folder(tmp_path):
    """config.json records quantization_config: diffusers' own class loads the folder through qvgen's backend."""
    import diffusers

    model = quantize(transformer("wan"))
    model.save_pretrained(tmp_path / "t")
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "qvgen"
    loaded = diffusers.WanTransformer3DModel.from_pretrained(tmp_path / "t")
    assert loaded.is_quantized and loaded.hf_quantizer.quantization_config.quant_method == "qvgen"
    assert dict(loaded.state_dict().items()).keys() == model.state_dict().keys()
    for key, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], t), key


def test_each_layer_builds_its_layout_once_at_load(tmp_path, monkeypatch):
    """diffusers hands a layer its codes, scales, zero points and clips one call each: the layout is built once,
    with all of them loaded, before from_pretrained returns (not once per tensor, nor at the first call)."""
    import diffusers

    from qvgen.quant.deployed import DeployedLinear

    model = quantize(transformer("wan"))
    model.save_pretrained(tmp_path / "t")
    built: dict[int, int] = {}
    prepack = DeployedLinear.prepack

    def counting(self, *args, **kwargs):
        built[id(self)] = built.get(id(self), 0) + 1
        return prepack(self, *args, **kwargs)

    monkeypatch.setattr(DeployedLinear, "prepack", counting)
    loaded = diffusers.WanTransformer3DModel.from_pretrained(tmp_path / "t")
    layers = [m for m in loaded.modules() if isinstance(m, DeployedLinear)]
    assert layers and all(built.get(id(m)) == 1 and m._packed is not None for m in layers)
    assert not any(m._prepack_deferred for m in layers)
    with torch.no_grad():
        assert torch.equal(aligned(loaded)(**_inputs("wan"))[0], model(**_inputs("wan"))[0])


def test_clear_errors(tmp_path):
    cls = qvgen.QuantizedWanTransformer3DModel
    with pytest.raises(ValueError, match="local folder"):
        cls.from_pretrained(tmp_path / "missing")
    transformer("wan").save_pretrained(tmp_path / "fp")  # an FP folder: no qvgen.json
    with pytest.raises(ValueError, match="qvgen.json"):
        cls.from_pretrained(tmp_path / "fp")
    with pytest.raises(AttributeError):
        qvgen.QuantizedNoSuchModel  # noqa: B018


def test_dtype_on_load_keeps_codes(tmp_path):
    model = quantize(transformer("wan"))
    model.save_pretrained(tmp_path / "t")
    loaded = type(model).from_pretrained(tmp_path / "t", dtype=torch.bfloat16)
    layer = loaded.blocks[0].attn1.to_q
    ref = model.blocks[0].attn1.to_q
    assert layer.compute_dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16
    assert torch.equal(layer.w_packed, ref.w_packed) and torch.equal(layer.w_scale, ref.w_scale)
    # diffusers' keep-in-fp32 modules stay fp32, as with its own from_pretrained.
    assert loaded.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert loaded.scale_shift_table.dtype == torch.float32


def test_qat_model_round_trip_keeps_phi(tmp_path):
    """A QAT checkpoint (QLinear with Phi) loads as QLinear layers, Phi ranks as saved, same output."""
    model = qvgen.quantize_model(transformer("wan"), qvgen.QuantConfig.preset("w4a4", rank=4))
    model.save_pretrained(tmp_path / "t")
    loaded = type(model).from_pretrained(tmp_path / "t")
    layers = list(qvgen.iter_qlinears(loaded))
    assert layers and all(isinstance(q, qvgen.QLinear) and q.phi_rank == 4 for _, q in layers)
    with torch.no_grad():
        assert torch.equal(aligned(loaded)(**_inputs("wan"))[0], model(**_inputs("wan"))[0])
