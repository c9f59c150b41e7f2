"""Width sweep: run order, resume from JSON lines, per-point statistics, report and the GPU plan (tiny sizes)."""

import dataclasses
import json

import pytest

from benchmarks.quality import width_report, width_sweep as ws


def _run(method, seed, mse, grads=(1.0, 1.0, 1.0, 1.0), ranks=(2, 2, 0, 0)):
    log = {"grad_norm_weights": list(grads), "rank": list(ranks), "train_seconds": 1.0,
           "decomposition_init": {"both": 0.1, "weights": 0.03, "acts": 0.08, "weights+phi": 0.02},
           "decomposition_end": {"both": 0.05, "weights": 0.02, "acts": 0.06}}
    return {"label": method, "seed": seed, "denoise_mse": mse, "psnr": 30.0, "bytes": 2048,
            "log": log if method in ("lsq", "qvgen", "qalora") else {}}


def _line(p, bits, width, seed, qvgen_mse, lsq_mse=0.01, qvgen_grads=(0.5, 0.5, 1.0, 1.0)):
    runs = [_run("ptq", seed, 0.04), _run("svdquant", seed, 0.03), _run("lsq", seed, lsq_mse),
            _run("qalora", seed, 0.011), _run("qvgen", seed, qvgen_mse, grads=qvgen_grads)]
    return {"preset": p.fingerprint(), "bits": bits, "width": width, "seed": seed, "rank": ws.rank_of(width),
            "teacher": {"key": "k", "path": "p", "seconds": 10.0}, "runs": runs, "seconds": 60.0,
            "load_average": [1.0, 1.0, 1.0], "provenance": {"command": "python -m x", "device_name": "cpu"}}


def test_rank_order_and_resume(tmp_path):
    assert [ws.rank_of(w) for w in (64, 128, 256, 512)] == [2, 4, 8, 16]  # ~3% of the width
    p = ws.PRESETS["cpu"]
    order = ws.jobs(p)
    assert order[:4] == [("w3a3", 64, 0), ("w3a3", 128, 0), ("w3a3", 256, 0), ("w3a3", 64, 1)]
    assert ("w3a3", 256, 4) not in order and ("w4a4", 128, 5) in order  # fewer seeds at the widest point
    assert all(b == "w3a3" for b, _, _ in order[:len(order) // 2])  # W3A3 completes first
    path = tmp_path / "s.jsonl"
    ws.append_line(path, _line(p, "w3a3", 64, 0, 0.009))
    with path.open("a") as f:
        f.write('{"torn')  # an interrupted write: ignored
    lines = ws.read_lines(path)
    assert len(lines) == 1 and ws.pending(p, lines) == order[1:]
    other = dataclasses.replace(p, steps=p.steps + 1)
    with pytest.raises(ValueError, match="another configuration"):
        ws.pending(other, lines)
    # More seeds later: the finished ones still count (seed counts are not part of the fingerprint).
    assert len(ws.pending(dataclasses.replace(p, seeds=(7, 6, 4)), lines)) == len(order) + 1


def test_point_statistics_and_report(tmp_path):
    p = ws.PRESETS["cpu"]
    lines = [_line(p, "w3a3", w, s, q) for w in (64, 128) for s, q in enumerate((0.009, 0.0095, 0.0092))]
    summary = width_report.summarize(lines)
    assert [(pt["bits"], pt["width"]) for pt in summary["points"]] == [("W3A3", 64), ("W3A3", 128)]
    pt = summary["points"][0]
    d = pt["delta_vs_lsq"]["qvgen"]
    assert d["n"] == 3 and d["lower"] == 3 and d["mean"] == pytest.approx(-100 * (1 - 0.00923333 / 0.01), abs=1e-3)
    assert d["verdict"] == "lower" and pt["delta_vs_lsq"]["ptq"]["mean"] == pytest.approx(300.0)
    # Gradient ratio over the steps where Phi is present only (rank > 0: the first two).
    g = pt["grad_ratio_phi"]
    assert g["mean"] == pytest.approx(-50.0) and g["half_width"] == pytest.approx(0.0, abs=1e-9)
    assert pt["decomposition"]["qvgen init"]["acts"] == pytest.approx(0.08)
    advice = width_report.advice(summary)
    assert any("choose QVGen at width(s) [64, 128]" in a for a in advice)
    assert any("QA-LoRA vs LSQ QAT" in a for a in advice)
    text = "\n".join(width_report.section(summary, "width_sweep"))
    assert "| W3A3 | 64 | 2 | 3 |" in text and "QA-LoRA (EfficientDM)" in text and "0.80" in text  # acts share
    width_report.plot(tmp_path / "w.png", summary)
    assert (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "width_sweep.json").write_text(json.dumps(summary))
    assert width_report.sections(tmp_path)[0] == "## Width sweep (width_sweep)"


def test_gpu_plan_dry_run(tmp_path, capsys):
    ws.main(["--preset", "gpu", "--dry-run", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Phi rank per width: 512: 16" in out and "jobs: 0 done, 4 to run" in out
    assert "w3a3 width 512 seed 1" in out and "w4a4 width 512 seed 0" in out


def test_tiny_sweep_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("QVGEN_CACHE", str(tmp_path / "cache"))
    p = dataclasses.replace(ws.PRESETS["tiny"], widths=(32,), seeds=(1,))
    import torch

    lines = ws.run(p, tmp_path, torch.device("cpu"), log=lambda s: None)
    assert [(ln["width"], ln["seed"]) for ln in lines] == [(32, 0)]
    assert [r["label"] for r in lines[0]["runs"]] == list(ws.METHODS)
    assert lines[0]["runs"][-1]["log"]["rank"] == [2, 1]  # QVGen: Phi decays
    more = dataclasses.replace(p, seeds=(2,))
    assert len(ws.run(more, tmp_path, torch.device("cpu"), log=lambda s: None, max_seconds=0.0)) == 1  # no time
    lines = ws.run(more, tmp_path, torch.device("cpu"), log=lambda s: None)
    assert [(ln["width"], ln["seed"]) for ln in lines] == [(32, 0), (32, 1)]  # seed 0 not rerun


def test_report_only_from_lines(tmp_path, capsys):
    ws.main(["--preset", "tiny", "--report-only", "--out", str(tmp_path)])
    assert "no finished jobs" in capsys.readouterr().out
    p = ws.PRESETS["tiny"]
    for s, q in enumerate((0.009, 0.0095)):
        ws.append_line(tmp_path / f"{p.name}.jsonl", _line(p, "w3a3", 32, s, q))
    ws.main(["--preset", "tiny", "--report-only", "--out", str(tmp_path)])
    md = (tmp_path / "quality.md").read_text()
    assert "## Width sweep (width_sweep_tiny)" in md and (tmp_path / "width_sweep_tiny.png").is_file()
    assert json.loads((tmp_path / "width_sweep_tiny.json").read_text())["jobs"] == 2
