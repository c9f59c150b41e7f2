"""Model benchmark: harness statistics, memory probe, real shapes on meta, eager baseline, a tiny end-to-end run."""

import json

import pytest
import torch

from benchmarks import _harness, bench_model
from benchmarks.eager_official import EagerQuantLinear, eager_act_fq, eager_weight_fq
from benchmarks.shapes import SHAPES, build_model, get_shape, linear_shapes
from qvgen_kernels import ops


def test_summarize_known_values():
    s = _harness.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s == {"median_ms": 3.0, "p10_ms": pytest.approx(1.4), "p90_ms": pytest.approx(4.6), "n": 5}
    assert _harness.summarize([7.0])["p90_ms"] == 7.0
    with pytest.raises(ValueError, match="non-empty"):
        _harness.summarize([])


def test_time_fn_calls_warmup_plus_repeats():
    calls = []
    out = _harness.time_fn(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5 and out["n"] == 3 and out["median_ms"] >= 0.0


def test_peak_memory_sees_a_large_transient_allocation():
    def alloc():
        t = torch.ones(16 << 20, dtype=torch.float32)  # 64 MiB, touched
        return float(t[-1])

    out = _harness.peak_memory(alloc, torch.device("cpu"))
    if out["peak_bytes"] is None:
        pytest.skip("no /proc/self/clear_refs on this system")
    assert out["peak_bytes"] >= 60 << 20  # 64 MiB minus page-accounting slack


@pytest.mark.parametrize("name,params", [("wan-1.3b", 1.419e9), ("wan-14b", 14.29e9), ("cogvideox-2b", 1.694e9)])
def test_real_shapes_on_meta_match_published_sizes(name, params):
    model = build_model(get_shape(name), "meta")
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - params) / params < 2e-3  # published counts are rounded to 4 significant digits
    kn = {(k, n_) for _, k, n_ in linear_shapes(model)}
    dim = {"wan-1.3b": 1536, "wan-14b": 5120, "cogvideox-2b": 1920}[name]
    assert (dim, dim) in kn
    assert get_shape(name).video_tokens == {"wan-1.3b": 32760, "wan-14b": 32760, "cogvideox-2b": 17550}[name]


def test_eager_quantizers_match_qvgen_fake_quant():
    g = torch.Generator().manual_seed(11)
    w = torch.randn(33, 70, generator=g)
    scale = (w.amax(1) - w.amin(1)) / 15
    zero = -w.amin(1) / scale
    ref = ops.fake_quant_weight(w, scale, zero, 4)
    got = eager_weight_fq(w, scale, zero, 4)
    # Same formula; a different fp32 evaluation order may flip a rounding tie: allow one step on <1% of entries.
    diff = (got - ref).abs()
    assert (diff > 1e-5).float().mean() < 0.01 and bool((diff <= scale[:, None] * 1.001 + 1e-6).all())
    x = torch.randn(9, 70, generator=g) * 3
    logit = torch.tensor([1.3])
    ref_a = ops.fake_quant_act(x, 3, float(torch.sigmoid(logit)), float(torch.sigmoid(logit)))
    got_a = eager_act_fq(x, logit, logit, 3)
    diff_a = (got_a - ref_a).abs()
    assert (diff_a > 1e-5).float().mean() < 0.01


def test_eager_linear_trains_through_checkpointed_quantizers():
    torch.manual_seed(0)
    layer = EagerQuantLinear(torch.nn.Linear(16, 8), 4, 4, rank=4)
    x = torch.randn(5, 16, requires_grad=True)
    layer(x).pow(2).sum().backward()
    for name in ("w", "scale", "zero", "lower", "upper", "L", "R"):
        assert getattr(layer, name).grad is not None, name
    with pytest.raises(TypeError, match="nn.Linear"):
        EagerQuantLinear(torch.nn.Conv1d(2, 2, 1), 4, 4, 0)


def test_small_benchmark_end_to_end(tmp_path):
    out = bench_model.main(["--shapes", "cogvideox-2b-small", "--scopes", "block", "--warmup", "0",
                            "--repeats", "1", "--out", str(tmp_path)])
    rows = out["rows"]
    assert [r["variant"] for r in rows] == list(bench_model.VARIANTS)
    assert all("latency" in r and r["latency"]["median_ms"] > 0 for r in rows)
    by = {r["variant"]: r for r in rows}
    assert by["w4a4-deploy"]["module_bytes"] < by["fp"]["module_bytes"] / 4  # packed 4-bit + fp32 scales
    assert by["w3a3-deploy"]["module_bytes"] < by["w4a4-deploy"]["module_bytes"]
    saved = json.loads((tmp_path / "model_bench.json").read_text())
    assert saved["provenance"]["command"] and saved["provenance"]["torch"] == torch.__version__
    assert (tmp_path / "model_bench.png").stat().st_size > 0
    assert "| cogvideox-2b-small | block | fp |" in (tmp_path / "model_bench.md").read_text()


def test_bad_arguments():
    with pytest.raises(ValueError, match="get_shape"):
        get_shape("wan-2b")
    with pytest.raises(ValueError, match="--shapes"):
        bench_model.main(["--shapes", "wan-1.3b", "--device", "cpu"])
    assert set(SHAPES) >= {"wan-1.3b-small", "wan-14b-small", "cogvideox-2b-small"}
