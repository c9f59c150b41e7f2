import json

import pytest

from qvgen import ARCH_SKIP_PRESETS, QuantConfig


@pytest.mark.parametrize("name,w,a", [("w4a4", 4, 4), ("w3a3", 3, 3), ("w4a8", 4, 8), ("w8a8", 8, 8),
                                      ("w4a16", 4, 16)])
def test_presets(name, w, a):
    cfg = QuantConfig.preset(name)
    assert (cfg.w_bits, cfg.a_bits) == (w, a)
    assert cfg.rank == 32 and cfg.clip_groups == 50 and cfg.w_init == "mse"


def test_preset_overrides_and_errors():
    cfg = QuantConfig.preset("w4a4", rank=16, w_group_size=64)
    assert cfg.rank == 16 and cfg.w_group_size == 64
    with pytest.raises(ValueError, match="name"):
        QuantConfig.preset("w2a2")
    with pytest.raises(TypeError, match="rnak"):
        QuantConfig.preset("w4a4", rnak=4)


@pytest.mark.parametrize("field,value", [
    ("w_bits", 2), ("w_bits", 16), ("w_bits", True), ("a_bits", 5), ("w_group_size", 0),
    ("w_group_size", -2), ("w_init", "percentile"), ("w_grad_scale", 1), ("a_clip_max", 0.0),
    ("a_clip_max", 1.5), ("a_clip_init", 0.95), ("a_clip_init", 0.0), ("a_clip_learnable", "yes"),
    ("clip_groups", 0), ("num_train_timesteps", 0), ("rank", -1), ("rank", 2.0), ("svd", "qr"),
    ("skip", "*proj*"), ("skip", (1,)), ("arch", "flux"),
])
def test_validation_names_field(field, value):
    with pytest.raises((ValueError, TypeError), match=f"'{field}'") as info:
        QuantConfig(**{field: value})
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_clip_init_logit_maps_to_init():
    import math
    cfg = QuantConfig(a_clip_max=0.95, a_clip_init=0.9025)
    # Double-precision round trip: 1e-12 covers the log / exp rounding.
    assert abs(cfg.a_clip_max / (1 + math.exp(-cfg.clip_init_logit)) - 0.9025) < 1e-12
    assert abs(cfg.clip_init_logit - math.log(0.95 / 0.05)) < 1e-12


def test_dict_round_trip_through_json():
    cfg = QuantConfig.preset("w3a3", skip=["*time_embedder*", "proj_out"], arch="wan", w_group_size=128)
    assert cfg.skip == ("*time_embedder*", "proj_out")
    back = QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    with pytest.raises(ValueError, match="bogus"):
        QuantConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(TypeError):
        QuantConfig.from_dict([("w_bits", 4)])


def test_arch_presets_and_skip_patterns():
    assert {"wan", "cogvideox", "hunyuan_video", "none"} <= set(ARCH_SKIP_PRESETS)
    assert all(ARCH_SKIP_PRESETS[k] == () for k in ("wan", "cogvideox", "hunyuan_video", "none"))
    cfg = QuantConfig(arch="wan_keep_fp32", skip=("proj_out",))
    assert cfg.skip_patterns == ("proj_out", "*time_embedder*")


def test_frozen_and_diff():
    cfg = QuantConfig()
    with pytest.raises(AttributeError):
        cfg.w_bits = 3
    assert cfg.diff(QuantConfig(w_bits=3, rank=8)) == {"w_bits": (4, 3), "rank": (32, 8)}
