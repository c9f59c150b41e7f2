"""End to end: ``qvgen demo --fast`` and ``qvgen train --model DIR`` through the CLI entry point."""

import json
import math
import re

import pytest
import torch

from qvgen.apps.cli import build_parser, main
from qvgen.train.data import load_data_file


def test_demo_fast_end_to_end(tmp_path, capsys):
    out, cache = tmp_path / "demo", tmp_path / "cache"
    assert main(["demo", "--fast", "--out", str(out), "--cache-dir", str(cache), "--device", "cpu",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for name in ("report.md", "samples.png", "curves.png", "results.json", "train/metrics.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "samples.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| FP teacher |" in report and "PTQ" in report and "QVGen W4A4 (deployed)" in report
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    fp, ptq, qv = rows["FP teacher"], rows["W4A4 PTQ (RTN)"], rows["QVGen W4A4 (deployed)"]
    assert fp["denoise_mse"] == 0.0 and fp["psnr"] == "inf"
    for row in (ptq, qv):
        assert math.isfinite(row["denoise_mse"]) and row["denoise_mse"] > 0
        assert math.isfinite(row["psnr"]) and -1.0 <= row["ssim"] <= 1.0
        assert row["phi_rank"] == 0  # deployed: no Phi
        assert row["bytes"] < fp["bytes"] / 3  # packed 4-bit weights
    # The printed table and verdict carry the same numbers.
    assert re.search(r"^(YES|NO|MIXED): deployed QVGen W4A4", printed, re.M)
    # LSQ QAT (no Phi, same seed and steps) runs by default; the verdict says whether Phi paid off.
    lsq = rows["LSQ QAT W4A4 (deployed)"]
    assert lsq["phi_rank"] == 0 and lsq["bytes"] == qv["bytes"] and (out / "train-lsq" / "metrics.jsonl").is_file()
    assert re.search(r"^PHI (PAID OFF|MIXED|DID NOT PAY OFF) on this seed", printed, re.M)
    assert f"{lsq['denoise_mse']:.6f}" in printed and "PHI" in report
    assert f"{qv['denoise_mse']:.6f}" in printed and f"{ptq['denoise_mse']:.6f}" in printed
    # The deployed model's forward speed against the FP model, measured on this machine.
    speed = re.search(r"^Deployed QVGen W4A4 forward \(\d+ clips\): ([\d.]+) ms vs FP ([\d.]+) ms fp32 \(([\d.]+)x\)",
                      printed, re.M)
    assert speed and float(speed.group(1)) > 0 and "forward ms (fp32 / bf16 / deployed)" in report
    assert abs(float(speed.group(2)) / float(speed.group(1)) - float(speed.group(3))) < 0.02
    # The saved quantized model exists, and the teacher was cached: a second run loads it.
    assert (out / "qvgen-w4a4" / "qvgen.json").is_file()
    teacher_dirs = list(cache.glob("demo-teacher-*"))
    assert len(teacher_dirs) == 1 and (teacher_dirs[0] / "teacher.json").is_file()
    records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(4)) and records[0]["rank"] == 2


def _tiny_wan():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                 out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=1,
                                 rope_max_seq_len=32)


@pytest.mark.parametrize("with_data", [False, True])
def test_train_tiny_wan_directory(tmp_path, capsys, with_data):
    model_dir = tmp_path / "wan"
    _tiny_wan().save_pretrained(model_dir)
    args = ["train", "--model", str(model_dir), "--steps", "2", "--rank", "2", "--batch-size", "2",
            "--latent-shape", "2", "4", "4", "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"]
    if with_data:
        from safetensors.torch import save_file

        g = torch.Generator().manual_seed(1)
        save_file({"latents": torch.randn(5, 4, 2, 4, 4, generator=g),
                   "encoder_hidden_states": torch.randn(5, 3, 16, generator=g)}, str(tmp_path / "data.safetensors"))
        args += ["--data", str(tmp_path / "data.safetensors")]
    assert main(args) == 0
    assert "deployed and saved" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "quantized" / "qvgen.json").read_text())
    assert saved["mode"] == "deploy"
    assert (tmp_path / "out" / "train" / "metrics.jsonl").is_file()

    from qvgen import load_quantized

    loaded = load_quantized(_tiny_wan(), tmp_path / "out" / "quantized")
    x = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    y = loaded(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=torch.zeros(1, 3, 16),
               return_dict=False)[0]
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_train_checkpoints_and_resumes(tmp_path, monkeypatch):
    """--ckpt-every writes intermediate checkpoints; after a crash, --resume (here with
    --grad-checkpointing) runs only the remaining steps and deploys."""
    from qvgen.train import Distiller

    model_dir = tmp_path / "wan"
    _tiny_wan().save_pretrained(model_dir)
    out = tmp_path / "out"
    args = ["train", "--model", str(model_dir), "--steps", "3", "--rank", "2", "--batch-size", "1",
            "--latent-shape", "1", "4", "4", "--out", str(out), "--device", "cpu", "--no-progress",
            "--ckpt-every", "1"]
    real_step, steps_run = Distiller.train_step, []

    def crash_at_2(self, step):
        if step == 2:
            raise KeyboardInterrupt
        steps_run.append(step)
        return real_step(self, step)

    monkeypatch.setattr(Distiller, "train_step", crash_at_2)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    meta = json.loads((out / "train" / "ckpt-last" / "meta.json").read_text())
    assert meta["step"] == 2 and steps_run == [0, 1]

    def counting(self, step):
        steps_run.append(step)
        return real_step(self, step)

    monkeypatch.setattr(Distiller, "train_step", counting)
    assert main(args + ["--resume", "--grad-checkpointing"]) == 0
    assert steps_run == [0, 1, 2]  # the resumed run trained step 2 only
    records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert json.loads((out / "quantized" / "qvgen.json").read_text())["mode"] == "deploy"


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--bits", "w2a2"])
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--model", "m", "--ckpt-every", "-1"])
    assert build_parser().parse_args(["train", "--model", "m"]).ckpt_every == 200
    with pytest.raises(ValueError, match="qvgen train: argument '--model'"):
        main(["train", "--model", str(tmp_path)])
    torch.save({"latents": torch.zeros(3, 2), "encoder_hidden_states": torch.zeros(2, 4)}, tmp_path / "d.pt")
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        load_data_file(tmp_path / "d.pt")
    help_text = build_parser().format_help()
    assert "demo" in help_text and "train" in help_text
