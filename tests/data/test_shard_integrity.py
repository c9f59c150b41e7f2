"""Shards are verified and precompute is keyed by what produced it: hashes checked when read (naming the
file), every shard checked against the manifest, settings validated up front, a rerun with another pipeline
refused, a changed video or a damaged shard recomputed, bad videos skipped and listed with --skip-bad."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from qvgen.apps.cli import main
from qvgen.data import LatentShards
from qvgen.storage.integrity import file_digest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_pipeline import make_clips, tiny  # noqa: E402,F401  (the fixture)

ARGS = ["--frames", "9", "--height", "32", "--width", "32", "--fps", "8", "--shard-size", "2", "--no-progress"]


def _run(pipeline, source, out, *args):
    return main(["precompute", "--pipeline", str(pipeline), "--videos", str(source), "--out", str(out), *args])


@pytest.fixture(scope="module")
def shards(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "s"
    _run(tiny["wan"], tiny["clips"], out, *ARGS)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(folder: Path, edit) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _replace_sample(folder: Path, **tensors) -> None:
    """Rewrite shard 0 (2 samples) with other tensors for sample 0 and record its new hash (a consistent but
    wrong folder)."""
    from safetensors.torch import load_file

    file = folder / "shard-00000.safetensors"
    state = load_file(str(file))
    state.update({f"0.{k}": v for k, v in tensors.items()})
    save_file(state, str(file))
    _edit_manifest(folder, lambda m: m["shards"][0].update(sha256=file_digest(file)))


def _read_all(folder: Path) -> None:
    data = LatentShards(folder)
    for i in range(len(data)):
        data[i]
    data.null_text()


def test_flipped_bit_is_named(shards, tmp_path):
    bad = _copy(shards, tmp_path / "flip")
    file = bad / "shard-00001.safetensors"
    raw = bytearray(file.read_bytes())
    raw[-5] ^= 0x01
    file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="shard-00001.safetensors.*content hash"):
        _read_all(bad)


@pytest.mark.parametrize("case, tensors, match", [
    ("shape", {"latents": torch.zeros(4, 3, 8, 8)}, "sample 0 latents"),
    ("small", {"latents": torch.zeros(4, 2, 4, 4)}, "sample 0 latents"),
    ("int32", {"latents": torch.zeros(4, 3, 4, 4, dtype=torch.int32)}, "sample 0 latents"),
    ("uint8", {"latents": torch.zeros(4, 3, 4, 4, dtype=torch.uint8)}, "sample 0 latents"),
    ("text-1d", {"encoder_hidden_states": torch.zeros(16)}, "sample 0 text"),
])
def test_shard_contents_checked_against_manifest(shards, tmp_path, case, tensors, match):
    bad = _copy(shards, tmp_path / case)
    _replace_sample(bad, **tensors)
    with pytest.raises(ValueError, match=match):
        _read_all(bad)


@pytest.mark.parametrize("case, edit, match", [
    ("samples", lambda m: m["shards"][0].update(samples=1), "samples"),
    ("seq0", lambda m: m.update(max_sequence_length=0), "max_sequence_length"),
    ("outside", lambda m: m["shards"][0].update(file="../elsewhere.safetensors"), "inside"),
    ("no-hash", lambda m: m["shards"][0].pop("sha256"), "sha256"),
])
def test_manifest_fields_checked(shards, tmp_path, case, edit, match):
    bad = _copy(shards, tmp_path / case)
    _edit_manifest(bad, edit)
    with pytest.raises(ValueError, match=match):
        _read_all(bad)


def test_truncated_shard_and_array_manifest_are_named(shards, tmp_path):
    bad = _copy(shards, tmp_path / "short")
    file = bad / "shard-00000.safetensors"
    file.write_bytes(file.read_bytes()[:100])
    _edit_manifest(bad, lambda m: m["shards"][0].update(sha256=file_digest(file)))
    with pytest.raises(ValueError, match="shard-00000.safetensors"):
        _read_all(bad)
    (bad / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="manifest.json.*JSON object"):
        LatentShards(bad)


@pytest.mark.parametrize("flag, value", [("--frames", "8"), ("--frames", "10"), ("--frames", "2"),
                                         ("--height", "36"), ("--width", "44"), ("--fps", "-8"),
                                         ("--fps", "nan"), ("--fps", "inf"), ("--fps", "0")])
def test_invalid_settings_refused_up_front(tiny, tmp_path, flag, value):
    args = [a for a in ARGS]
    args[args.index(flag) + 1] = value
    with pytest.raises(ValueError, match=flag):
        _run(tiny["wan"], tiny["clips"], tmp_path / "s", *args)
    assert not list((tmp_path / "s").glob("shard-*"))


def test_zero_latents_std_refused(tiny, tmp_path):
    pipe = _copy(tiny["wan"], tmp_path / "wan0")
    cfg = json.loads((pipe / "vae" / "config.json").read_text())
    cfg["latents_std"][1] = 0.0
    (pipe / "vae" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="latents_std"):
        _run(pipe, tiny["clips"], tmp_path / "s", *ARGS)


def test_rerun_with_other_pipeline_is_refused(tiny, shards, tmp_path):
    other = _copy(tiny["wan"], tmp_path / "wanB")
    cfg = json.loads((other / "vae" / "config.json").read_text())
    cfg["latents_std"][0] = 3.0
    (other / "vae" / "config.json").write_text(json.dumps(cfg))
    out = _copy(shards, tmp_path / "s")
    with pytest.raises(ValueError, match="pipeline"):
        _run(other, tiny["clips"], out, *ARGS)


def test_changed_video_and_damaged_shard_are_recomputed(tiny, shards, tmp_path):
    clips = _copy(tiny["clips"], tmp_path / "clips")
    out = _copy(shards, tmp_path / "s")
    before = {s["file"]: s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    video = torch.full((12, 40, 56, 3), 200, dtype=torch.uint8)  # same name and caption, other frames
    from qvgen.data.video import write_clip

    write_clip(clips / "clip00.mp4", video)
    raw = bytearray((out / "shard-00002.safetensors").read_bytes())
    raw[-3] ^= 0x10
    (out / "shard-00002.safetensors").write_bytes(bytes(raw))
    _run(tiny["wan"], clips, out, *ARGS)
    after = {s["file"]: s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    assert after["shard-00000.safetensors"] != before["shard-00000.safetensors"]  # recomputed
    assert after["shard-00001.safetensors"] == before["shard-00001.safetensors"]  # kept
    assert after["shard-00002.safetensors"] == before["shard-00002.safetensors"]  # rewritten whole
    _read_all(out)


def test_skip_bad_lists_unreadable_and_short_videos(tiny, tmp_path):
    clips = _copy(tiny["clips"], tmp_path / "clips")
    (clips / "broken.mp4").write_bytes(b"not a video at all")
    make_clips(tmp_path / "short", 1, frames=3)
    shutil.copy(tmp_path / "short" / "clip00.mp4", clips / "short.mp4")
    with pytest.raises(ValueError, match="broken.mp4"):
        _run(tiny["wan"], clips, tmp_path / "strict", *ARGS)
    _run(tiny["wan"], clips, tmp_path / "s", *ARGS, "--skip-bad")
    skipped = json.loads((tmp_path / "s" / "skipped.json").read_text())
    assert sorted(Path(s["video"]).name for s in skipped) == ["broken.mp4", "short.mp4"]
    assert all(s["reason"] for s in skipped)
    assert len(LatentShards(tmp_path / "s")) == 5
    _read_all(tmp_path / "s")
