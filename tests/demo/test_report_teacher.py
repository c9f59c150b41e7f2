"""Report rendering and the teacher cache."""

import json
import math

import pytest
import torch

from qvgen.apps.demo import report
from qvgen.apps.demo.teacher import TeacherConfig, cache_dir_for, get_teacher, load_teacher


def test_table_and_verdict():
    rows = [{"name": "FP", "denoise_mse": 0.0, "psnr": math.inf, "ssim": 1.0, "bytes": 1000, "phi_rank": 0},
            {"name": "PTQ", "denoise_mse": 0.02, "psnr": 25.0, "ssim": 0.9, "bytes": 250, "phi_rank": 0},
            {"name": "QVGen", "denoise_mse": 0.01, "psnr": 28.5, "ssim": 0.95, "bytes": 250}]
    table = report.results_table(rows).splitlines()
    assert len(table) == 5 and table[2].startswith("| FP | 0.000000 | inf | 1.0000 | 1,000 | 0 |")
    assert table[4].endswith("| 250 | - |")  # missing key
    assert report.verdict(rows[1], rows[2]).startswith("YES: deployed QVGen W4A4 (no Phi) is closer")
    assert report.verdict(rows[2], rows[1], "W3A3").startswith("NO: deployed QVGen W3A3")
    mixed = dict(rows[2], psnr=20.0)
    assert report.verdict(rows[1], mixed).startswith("MIXED")
    lsq = dict(rows[2], denoise_mse=0.0125, psnr=28.0)
    line = report.lsq_verdict(lsq, rows[2], "W4A4", 600)
    assert line.startswith("PHI PAID OFF on this seed") and "-20.0%" in line and "600 steps" in line
    assert report.lsq_verdict(rows[2], lsq).startswith("PHI DID NOT PAY OFF")
    assert report.lsq_verdict(dict(lsq, psnr=29.0), rows[2]).startswith("PHI MIXED")


def test_clips_to_image_layout():
    a = torch.full((2, 3, 4, 5, 6), -1.0)
    b = torch.full((2, 3, 4, 5, 6), 1.0)
    img = report.clips_to_image([a, b], gap=2)
    # rows: 2 * (5 + 2) + 2; cols per clip strip: 4 * (6 + 2) + 2, two strips + 2.
    assert img.shape == (16, 2 * 34 + 2, 3)
    assert img[2, 2].tolist() == [0.0, 0.0, 0.0]  # first frame of clip a, black
    assert img[2, 2 + 34].tolist() == [1.0, 1.0, 1.0]  # first frame of clip b, white
    with pytest.raises(ValueError, match="clips_to_image: argument 'clips'"):
        report.clips_to_image([a, b[:1]])


def test_write_report_and_pngs(tmp_path):
    rows = [{"name": "FP", "denoise_mse": 0.0, "psnr": math.inf},
            {"name": "Q", "denoise_mse": 0.5, "psnr": 10.0}]
    path = report.write_report(tmp_path, rows, "summary line", {"steps": 3}, {"curves": "curves.png"})
    text = path.read_text()
    assert "summary line" in text and "- steps: 3" in text and "![curves](curves.png)" in text
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["psnr"] == "inf"
    records = [{"step": i, "loss": 1.0 / (i + 1), "grad_norm": 0.5, "rank": 4 >> (i // 2)} for i in range(6)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert report.read_metrics_jsonl(tmp_path / "m.jsonl") == records
    report.save_curves(tmp_path / "curves.png", {"QVGen": records}, [(1, 2.0), (2, 1.5)])
    clips = {"FP": torch.rand(2, 3, 8, 16, 16) * 2 - 1, "Q": torch.zeros(2, 3, 8, 16, 16)}
    report.save_sample_grid(tmp_path / "samples.png", clips, ["a", "b"])
    for name in ("curves.png", "samples.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_teacher_cache_round_trip(tmp_path):
    cfg = TeacherConfig(steps=2, batch_size=2, num_layers=1, ffn_dim=32, seed=3)
    assert cfg.key() == TeacherConfig(steps=2, batch_size=2, num_layers=1, ffn_dim=32, seed=3).key()
    assert cfg.key() != TeacherConfig(steps=3, batch_size=2, num_layers=1, ffn_dim=32, seed=3).key()
    model, info = get_teacher(cfg, cache_root=tmp_path)
    assert not info["cached"] and len(info["loss_curve"]) == 2
    path = cache_dir_for(cfg, tmp_path)
    assert path.name == f"demo-teacher-{cfg.key()}" and (path / "config.json").is_file()
    again, info2 = get_teacher(cfg, cache_root=tmp_path)
    assert info2["cached"]
    for (n, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), n
    other = TeacherConfig(steps=5, batch_size=2, num_layers=1, ffn_dim=32, seed=3)
    with pytest.raises(ValueError, match="load_teacher: argument 'path'"):
        load_teacher(path, other)
    _, info3 = get_teacher(cfg, cache_root=tmp_path, retrain=True)
    assert not info3["cached"]
    with pytest.raises(ValueError, match="TeacherConfig: argument 'size'"):
        TeacherConfig(size=15)


def test_teacher_cache_folder_follows_umask(tmp_path):
    """A shared cache: the teacher's folder gets 0777 minus the umask (mkdtemp would make it 0700)."""
    import os

    old = os.umask(0o022)
    try:
        get_teacher(TeacherConfig(steps=1, batch_size=2, num_layers=1, ffn_dim=32, seed=4), cache_root=tmp_path)
    finally:
        os.umask(old)
    path = cache_dir_for(TeacherConfig(steps=1, batch_size=2, num_layers=1, ffn_dim=32, seed=4), tmp_path)
    assert path.stat().st_mode & 0o777 == 0o755
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
