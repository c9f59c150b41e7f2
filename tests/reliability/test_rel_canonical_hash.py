"""qvgen.json is hashed by content, not text (a pretty-printed or CRLF copy still loads), and a format_version 2
checkpoint never loads without its hashes (weights re-saved without metadata are refused, not warned about)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import qvgen

from rel_helpers import dit_output, qat_toys, quantized_dit


@pytest.fixture
def saved(tmp_path):
    model = qvgen.to_deploy(quantized_dit(rank=0))
    qvgen.save_quantized(model, tmp_path / "q")
    return model, tmp_path / "q"


@pytest.mark.parametrize("rewrite", [
    lambda text: json.dumps(json.loads(text), indent=4, sort_keys=True),
    lambda text: text.replace("\n", "\r\n"),
])
def test_same_json_other_text_loads(saved, rewrite):
    model, path = saved
    meta = path / "qvgen.json"
    meta.write_bytes(rewrite(meta.read_text()).encode())
    loaded = qvgen.load_quantized(qat_toys.ToyDiT(), path)
    assert torch.equal(dit_output(loaded), dit_output(model))


def test_changed_json_value_is_refused(saved):
    _, path = saved
    meta = json.loads((path / "qvgen.json").read_text())
    meta["model_class"] = "other.Model"
    (path / "qvgen.json").write_text(json.dumps(meta, indent=2))
    with pytest.raises(ValueError, match="qvgen.json"):
        qvgen.load_quantized(qat_toys.ToyDiT(), path)


def _resave_without_metadata(path, edit) -> None:
    state = load_file(str(path / "model.safetensors"))
    edit(state)
    save_file(state, str(path / "model.safetensors"))


def _swap_packed(state):
    keys = sorted(k for k in state if k.endswith("w_packed"))
    a, b = next((x, y) for x in keys for y in keys if x != y and state[x].shape == state[y].shape)
    state[a], state[b] = state[b], state[a]


def _scale(state):
    key = next(k for k in sorted(state) if k.endswith("w_scale"))
    state[key] = state[key] * 4


@pytest.mark.parametrize("edit", [lambda s: None, _swap_packed, _scale])
def test_version_2_without_hashes_is_refused(saved, edit):
    _, path = saved
    _resave_without_metadata(path, edit)
    with pytest.raises(ValueError, match="format_version 2.*requires"):
        qvgen.load_quantized(qat_toys.ToyDiT(), path)
