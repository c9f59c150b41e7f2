"""Quality-study methods end to end at toy size: every method builds a deployed model with qvgen's trainer."""

import math

import pytest
import torch

import qvgen
from benchmarks.quality.methods import Budget, MethodSpec, build
from benchmarks.quality.run_study import evaluate, rank_for_width, study_specs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from qvgen.apps.demo.pipeline import DemoConfig, make_probe
    from qvgen.apps.demo.sprites import SpriteData
    from qvgen.apps.demo.teacher import TeacherConfig, get_teacher

    torch.manual_seed(0)
    tcfg = TeacherConfig(steps=3, batch_size=2, num_layers=1)
    teacher, _ = get_teacher(tcfg, "cpu", str(tmp_path_factory.mktemp("teacher")))
    teacher.requires_grad_(False)
    data = SpriteData(tcfg.sprites(), batch_size=2)
    demo_cfg = DemoConfig.fast(seed=1)
    probe = make_probe(teacher, data, demo_cfg, torch.device("cpu"))
    return teacher, data, demo_cfg, probe


@pytest.mark.parametrize("spec", [MethodSpec("ptq", "w3a3"), MethodSpec("svdquant"), MethodSpec("qalora"),
                                  MethodSpec("qvgen", rank=2), MethodSpec("drop", rank=2),
                                  MethodSpec("keep", rank=2, bits="w3a3")], ids=lambda s: s.label)
def test_method_builds_deployed_model(setup, spec, tmp_path):
    teacher, data, demo_cfg, probe = setup
    model, log = build(spec, teacher, data, Budget(steps=2, batch_size=2), seed=0, out=tmp_path)
    layers = list(qvgen.iter_qlinears(model))
    assert layers and all(q.mode == "deploy" for _, q in layers)
    expected_rank = 2 if spec.method == "keep" else 0
    assert all(q.phi_rank == expected_rank for _, q in layers)
    if spec.method in ("qvgen", "drop", "keep"):
        assert len(log["grad_norm_weights"]) == 2 and all(g > 0 for g in log["grad_norm_weights"])
        # qvgen: two rank stages of one step (2 then 1); drop/keep train at full rank throughout.
        assert log["rank"] == ([2, 1] if spec.method == "qvgen" else [2, 2])
    row = evaluate(spec, model, probe, demo_cfg)
    for key in ("denoise_mse", "psnr", "ssim", "motion_ratio", "trajectory_error", "temporal_consistency"):
        assert math.isfinite(row[key]), key
    assert row["denoise_mse"] > 0  # quantized: never identical to the teacher


def test_fp_row_is_exact_reference(setup, tmp_path):
    teacher, data, demo_cfg, probe = setup
    model, log = build(MethodSpec("fp"), teacher, data, Budget(steps=1), seed=0, out=tmp_path)
    row = evaluate(MethodSpec("fp"), model, probe, demo_cfg)
    assert log == {} and row["denoise_mse"] == 0.0 and row["psnr"] == math.inf
    assert row["motion_ratio"] == pytest.approx(1.0, abs=1e-6) and row["trajectory_error"] == 0.0


def test_study_specs_and_errors():
    assert [s.label for s in study_specs("methods", 16)][:3] == ["fp teacher", "ptq W4A4", "svdquant r16 W4A4"]
    ablations = {s.label for s in study_specs("ablations", 16)}
    assert {"qvgen r8 end1 W4A4", "qvgen r32 end1 W4A4", "qvgen r16 linear end1 W4A4", "drop r16 W4A4",
            "keep r16 W4A4"} <= ablations
    mech = [s.label for s in study_specs("mechanism", 2, ("w3a16",))]
    assert mech == ["fp teacher", "ptq W3A16", "svdquant r2 W3A16", "lsq W3A16", "qvgen r2 end1 W3A16",
                    "qvgen r2 end0.5 W3A16", "keep r2 W3A16"]
    assert [s.label for s in study_specs("budget", 4)] == ["lsq W3A3", "qvgen r4 end1 W3A3", "qvgen r4 end0.5 W3A3"]
    assert [rank_for_width(w) for w in (64, 128, 512, 1536, 5120)] == [2, 2, 8, 32, 128]
    with pytest.raises(ValueError, match="study"):
        study_specs("speed", 16)
    with pytest.raises(ValueError, match="method"):
        MethodSpec("gptq")


def test_mechanism_logs(setup, tmp_path):
    """With the probe: the Phi-free curve every 10% (11 points), the decomposition before and after, and the
    decay_end schedule in the rank log (Phi gone after half of training)."""
    teacher, data, demo_cfg, probe = setup
    spec = MethodSpec("qvgen", "w3a16", rank=2, decay_end=0.5)
    model, log = build(spec, teacher, data, Budget(steps=10, batch_size=2), seed=0, out=tmp_path, probe=probe)
    assert log["rank"] == [2, 2, 1, 1] + [0] * 6  # 5 decay steps: stages of 2
    assert [pt["step"] for pt in log["curve"]] == list(range(11))
    assert all(pt["phi_free"] > 0 for pt in log["curve"])
    assert log["curve"][0]["with_phi"] != log["curve"][0]["phi_free"] and log["curve"][-1]["with_phi"] == \
        log["curve"][-1]["phi_free"]
    init, end = log["decomposition_init"], log["decomposition_end"]
    assert {"both", "both+phi", "weights", "weights+phi", "acts"} == set(init) and "both+phi" not in end
    assert init["acts"] < 1e-9  # W3A16: activations are not quantized
    assert all(q.phi_rank == 0 for _, q in qvgen.iter_qlinears(model))
