"""Issue item 6: a loadable checkpoint at the path at every instant, no leftovers, bounded sizes, confined paths."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from qvgen import load_quantized, save_quantized
from qvgen.storage import atomic_dir
from qvgen.models.loading import check_weight_map

from rel_helpers import dit_output, qat_toys, quantized_dit, rewrite_consistently


class _Killed(BaseException):
    """The process dying at a chosen point of a save."""


def _models():
    a, b = quantized_dit(seed=0), quantized_dit(seed=1)
    return (a, dit_output(a)), (b, dit_output(b))


def _loads_one_of(path, *outputs) -> bool:
    got = dit_output(load_quantized(qat_toys.ToyDiT(), path))
    return any(torch.equal(got, o) for o in outputs)


def _dying(real, kill_at, when, calls):
    """``real`` (a rename or exchange), raising _Killed before or after the kill_at-th call of any of them."""
    def op(src, dst):
        calls.append(dst)
        if len(calls) == kill_at and when == "before":
            raise _Killed
        result = real(src, dst)
        if len(calls) == kill_at:
            raise _Killed
        return result
    return op


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_a_save_killed_at_any_rename_leaves_a_loadable_checkpoint(tmp_path, monkeypatch, exchange):
    (a, out_a), (b, out_b) = _models()
    path = tmp_path / "c"
    real_exchange = atomic_dir.exchange if exchange else (lambda x, y: False)
    real_rename, interrupted = os.rename, 0
    for kill_at in range(1, 5):
        for when in ("before", "after"):
            save_quantized(a, path)
            calls = []
            monkeypatch.setattr(os, "rename", _dying(real_rename, kill_at, when, calls))
            monkeypatch.setattr(atomic_dir, "exchange", _dying(real_exchange, kill_at, when, calls))
            try:
                save_quantized(b, path)
            except _Killed:
                interrupted += 1
            finally:
                monkeypatch.setattr(os, "rename", real_rename)
                monkeypatch.setattr(atomic_dir, "exchange", real_exchange)
            assert _loads_one_of(path, out_a, out_b), f"killed {when} rename {kill_at}"
    assert interrupted >= 4
    save_quantized(a, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # leftovers of the killed saves are gone


def test_a_load_between_the_two_renames_finds_the_newest_copy(tmp_path):
    (a, out_a), (b, out_b) = _models()
    save_quantized(a, tmp_path / "c")
    save_quantized(b, tmp_path / "new")
    os.rename(tmp_path / "c", tmp_path / ".c.old-1")  # the old copy moved away ...
    os.rename(tmp_path / "new", tmp_path / ".c.tmp-2")  # ... the new one not yet in place
    os.utime(tmp_path / ".c.tmp-2")
    assert _loads_one_of(tmp_path / "c", out_b)


def test_leftovers_of_killed_saves_are_removed(tmp_path):
    (a, out_a), _ = _models()
    for stale in (".c.old-0123abcd", ".c.tmp-xyz"):
        (tmp_path / stale).mkdir()
        (tmp_path / stale / "model.safetensors").write_bytes(b"partial")
    save_quantized(a, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"] and _loads_one_of(tmp_path / "c", out_a)


@pytest.mark.parametrize("rank", [10**9, -1, 5, "4", True])
def test_phi_ranks_are_bounded_by_the_tensors_present(tmp_path, rank):
    save_quantized(quantized_dit(rank=4), tmp_path / "c")

    def edit(meta):
        meta["phi_ranks"]["blocks.0.to_q"] = rank

    rewrite_consistently(tmp_path / "c", edit)  # hashes re-recorded: only the bound can catch it
    with pytest.raises(ValueError, match=r"phi_ranks\['blocks.0.to_q'\].*\[0, 4\]"):
        load_quantized(qat_toys.ToyDiT(), tmp_path / "c")


@pytest.mark.parametrize("entry", ["../outside.safetensors", "/etc/passwd", "a/../../x.safetensors", "", None])
def test_sharded_weight_map_stays_in_the_model_folder(tmp_path, entry):
    model = tmp_path / "model"
    model.mkdir()
    index = {"weight_map": {"w": "diffusion_pytorch_model-00001.safetensors", "v": entry}}
    (model / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="weight_map"):
        check_weight_map(model)


def test_sharded_weight_map_inside_the_folder_is_accepted(tmp_path):
    (tmp_path / "sub").mkdir()
    index = {"weight_map": {"w": "a.safetensors", "v": "sub/b.safetensors"}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert check_weight_map(tmp_path) == [tmp_path / "a.safetensors", tmp_path / "sub" / "b.safetensors"]
    shutil.rmtree(tmp_path / "sub")
