"""The README's "Use with diffusers" example runs (tiny components), and `qvgen generate` writes clips and
compares them with the FP pipeline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tiny_pipes import CALL, PROMPT, fp_pipeline_dir, quantize, transformer

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_python() -> str:
    section = README.read_text().split("## Use with diffusers", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_use_with_diffusers_runs(tmp_path):
    code = _readme_python()
    fp = fp_pipeline_dir(tmp_path / "fp", "wan")
    for old, new in (('"Wan2.1-T2V-1.3B-Diffusers"', repr(str(fp))), ('"wan-w4a8"', repr(str(tmp_path / "q"))),
                     ("num_inference_steps=30", "**CALL")):
        assert old in code
        code = code.replace(old, new)
    scope = {"CALL": CALL["wan"]}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["video"].shape[0] == CALL["wan"]["num_frames"]
    assert type(scope["transformer"]).__name__ == "QuantizedWanTransformer3DModel"


def test_generate_cli_compare_fp(tmp_path, capfd):
    from qvgen.apps.cli import main

    fp = fp_pipeline_dir(tmp_path / "fp", "wan")
    quantize(transformer("wan")).save_pretrained(tmp_path / "qt")
    out = tmp_path / "out"
    cmd = ["generate", "--pipeline", str(fp), "--transformer", str(tmp_path / "qt"), "--prompt", PROMPT,
           "--compare-fp", "--steps", "2", "--guidance", "3", "--height", "32", "--width", "32",
           "--frames", "5", "--seed", "1", "--device", "cpu", "--out", str(out), "--no-progress"]
    capfd.readouterr()
    assert main(cmd) == 0
    run = capfd.readouterr()
    assert "it/s" not in run.err  # --no-progress: diffusers' loading bars too
    names = sorted(p.name for p in out.iterdir())
    stem = "00_a-red-square-moving-left"
    assert names == sorted([f"{stem}{s}{e}" for s in ("", "_fp") for e in (".gif", ".mp4", ".png")] +
                           ["summary.json"])
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["psnr"] < float("inf") and -1 <= summary["ssim"] <= 1
    assert "vs FP: PSNR" in run.out
    import av
    with av.open(str(out / f"{stem}.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"  # browsers play H.264, not MPEG-4 Part 2
        assert sum(1 for _ in c.decode(video=0)) == 5
    # A second run into the same folder would replace those clips: refused in one line, unless --overwrite.
    before = (out / f"{stem}.mp4").stat().st_mtime_ns
    assert main(cmd, one_line_errors=True) == 2
    assert "--overwrite" in capfd.readouterr().err
    assert (out / f"{stem}.mp4").stat().st_mtime_ns == before
    assert main(cmd + ["--overwrite"]) == 0

def test_generate_progress_lines_when_stdout_is_not_a_tty(tmp_path, capsys, monkeypatch):
    import qvgen.progress
    from qvgen.apps.cli import main

    monkeypatch.setattr(qvgen.progress, "EVERY_S", 0.0)  # a line per denoising step instead of every 30 s
    fp = fp_pipeline_dir(tmp_path / "fp", "wan")
    quantize(transformer("wan")).save_pretrained(tmp_path / "qt")
    capsys.readouterr()
    assert main(["generate", "--pipeline", str(fp), "--transformer", str(tmp_path / "qt"), "--prompt", PROMPT,
                 "--prompt", "a blue dot", "--steps", "2", "--height", "32", "--width", "32", "--frames", "5",
                 "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out  # captured: not a TTY, as under `qvgen generate ... > log.txt`
    steps = re.findall(r"^\[generate quantized\] step (\d)/4, clip (\d)/2, .* elapsed", out, re.M)
    assert steps == [("1", "1"), ("2", "1"), ("3", "2"), ("4", "2")]  # from the pipeline's step callback
    assert re.findall(r"^\[generate quantized\] clip (\d)/2 done", out, re.M) == ["1", "2"]



@pytest.mark.parametrize("flags, message", [(["--guidance", "nan"], "finite"),
                                            (["--device", "cuda:7"], "--device")])
def test_generate_refuses_bad_arguments(tmp_path, capsys, flags, message):
    from qvgen.apps.cli import main

    cmd = ["generate", "--pipeline", str(tmp_path), "--prompt", PROMPT, "--out", str(tmp_path / "o"), *flags]
    try:
        rc = main(cmd, one_line_errors=True)
    except SystemExit as e:  # argparse rejects the value itself
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_generate_refuses_fp_transformer(tmp_path, capsys):
    from qvgen.apps.cli import main

    fp = fp_pipeline_dir(tmp_path / "fp", "wan")
    cmd = ["generate", "--pipeline", str(fp), "--prompt", PROMPT, "--steps", "1", "--device", "cpu",
           "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(cmd, one_line_errors=True) == 2  # a user mistake: one line on stderr
    assert "quantized transformer" in capsys.readouterr().err
    with pytest.raises(ValueError, match="quantized transformer"):  # --debug: the exception itself
        main(["--debug", *cmd], one_line_errors=True)


def test_train_names_subfolder_for_a_pipeline_root(tmp_path, capsys):
    from qvgen.apps.cli import main
    from qvgen.models.loading import load_diffusers_model

    transformer("wan").save_pretrained(tmp_path / "transformer")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    assert main(["train", "--model", str(tmp_path), "--out", str(tmp_path / "o")], one_line_errors=True) == 2
    assert "--subfolder transformer" in capsys.readouterr().err
    model = load_diffusers_model(tmp_path, subfolder="transformer")  # diffusers' own from_pretrained
    assert type(model).__name__ == "WanTransformer3DModel" and not model.training


def test_command_line_errors_are_one_line(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "qvgen", "generate", "--pipeline", str(tmp_path / "none"), "--prompt", "x",
           "--out", str(tmp_path / "o"), "--device", "cpu"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "--debug" in run.stderr
