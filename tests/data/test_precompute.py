"""qvgen precompute: real mp4 decoding, pipeline-normalised latents, unpadded text, resumable shards."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from qvgen.apps.cli import main
from qvgen.data import LatentShards
from qvgen.data.encoders import SPECS
from qvgen.data.video import read_clip
from qvgen.data.precompute import load_pipeline_parts

sys.path.insert(0, str(Path(__file__).parent))
from tiny_pipeline import tiny  # noqa: E402,F401  (the fixture)

ARGS = ["--frames", "9", "--height", "32", "--width", "32", "--fps", "8", "--shard-size", "2", "--no-progress"]

from tiny_pipeline import tiny  # noqa: E402,F401  (fixture)


def _run(pipeline, source, out, *extra, flag="--videos"):
    return main(["precompute", "--pipeline", str(pipeline), flag, str(source), "--out", str(out), *ARGS, *extra])


@pytest.mark.parametrize("kind", ["wan", "cogvideox"])
def test_latents_and_text_as_the_pipeline_expects(tiny, tmp_path, kind):
    assert _run(tiny[kind], tiny["clips"], tmp_path / "s") == 0
    shards = LatentShards(tmp_path / "s")
    m = shards.manifest
    assert len(shards) == 5 and len(m["shards"]) == 3 and m["kind"] == kind and m["complete"]
    spec, vae, tok, te = load_pipeline_parts(tiny[kind])
    clip = read_clip(tiny["paths"][3], 9, 32, 32, fps=8)
    with torch.no_grad():
        mu = vae.encode(clip[None]).latent_dist.mode()
    if kind == "wan":  # (mu - latents_mean) / latents_std, [C, F, H, W]
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        want = ((mu - mean) / std)[0]
        assert m["layout"] == "CFHW" and tuple(m["latent_shape"]) == (4, 3, 4, 4)
    else:  # mu * scaling_factor, [F, C, H, W]
        want = (mu * vae.config.scaling_factor)[0].permute(1, 0, 2, 3)
        assert m["layout"] == "FCHW" and tuple(m["latent_shape"]) == (3, 4, 4, 4)
    sample = shards[3]
    torch.testing.assert_close(sample["latents"], want, rtol=1e-5, atol=1e-5)
    prompt = (tiny["paths"][3].with_suffix(".txt")).read_text()
    n_tokens = len(prompt.split()) + 1  # words + </s>: the stored embedding is unpadded
    assert sample["encoder_hidden_states"].shape == (n_tokens, 16)
    full = spec.encode_text(tok, te, [prompt], SPECS[kind].max_sequence_length)[0]
    torch.testing.assert_close(sample["encoder_hidden_states"], full)
    assert shards.null_text().shape == (1, 16)  # the empty prompt: </s> only


def test_resume_skips_done_shards_and_refuses_other_settings(tiny, tmp_path):
    out = tmp_path / "s"
    _run(tiny["wan"], tiny["clips"], out)
    manifest = json.loads((out / "manifest.json").read_text())
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    (out / "shard-00001.safetensors").unlink()  # an interrupted run: one shard missing
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="finished precompute"):
        LatentShards(out)
    _run(tiny["wan"], tiny["clips"], out)
    again = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert again["shard-00000.safetensors"] == stamps["shard-00000.safetensors"]  # skipped
    assert again["shard-00002.safetensors"] == stamps["shard-00002.safetensors"]
    assert len(LatentShards(out)) == 5
    with pytest.raises(ValueError, match="frames: 9 there vs 5 now"):
        main(["precompute", "--pipeline", str(tiny["wan"]), "--videos", str(tiny["clips"]), "--out", str(out),
              "--frames", "5", "--height", "32", "--width", "32", "--fps", "8", "--shard-size", "2", "--no-progress"])


def test_lists_and_unreadable_video(tiny, tmp_path):
    rows = [{"video": str(p), "caption": f"a red square {i}"} for i, p in enumerate(tiny["paths"][:2])]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    _run(tiny["wan"], tmp_path / "l.jsonl", tmp_path / "j", flag="--list")
    (tmp_path / "l.csv").write_text("path,prompt\n" + "".join(f"{r['video']},{r['caption']}\n" for r in rows))
    _run(tiny["wan"], tmp_path / "l.csv", tmp_path / "c", flag="--list")
    a, b = LatentShards(tmp_path / "j"), LatentShards(tmp_path / "c")
    assert len(a) == len(b) == 2 and torch.equal(a[1]["latents"], b[1]["latents"])
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video" * 20)
    (tmp_path / "bad.csv").write_text(f"video,prompt\n{tiny['paths'][0]},ok\nbroken.mp4,broken\n")
    with pytest.raises(ValueError, match=r"readable video file, got .*broken\.mp4"):
        _run(tiny["wan"], tmp_path / "bad.csv", tmp_path / "b", flag="--list")
    (tmp_path / "nocol.csv").write_text("file_name,prompt\nx.mp4,y\n")
    with pytest.raises(ValueError, match=r"video column .*nocol\.csv:2"):
        _run(tiny["wan"], tmp_path / "nocol.csv", tmp_path / "n", flag="--list")


def test_progress_lines_when_stdout_is_not_a_tty(tiny, tmp_path, capsys, monkeypatch):
    import qvgen.progress

    monkeypatch.setattr(qvgen.progress, "EVERY_S", 0.0)  # a line per video instead of every 30 s
    args = [a for a in ARGS if a != "--no-progress"]
    capsys.readouterr()
    assert main(["precompute", "--pipeline", str(tiny["wan"]), "--videos", str(tiny["clips"]), "--out",
                 str(tmp_path / "s"), *args]) == 0
    out = capsys.readouterr().out  # captured: not a TTY, as under `qvgen precompute ... > log.txt`
    assert [int(n) for n in re.findall(r"^\[precompute\] video (\d)/5, .* elapsed", out, re.M)] == [1, 2, 3, 4, 5]
    assert re.findall(r"^\[precompute\] shard (\d)/3 written", out, re.M) == ["1", "2", "3"]
