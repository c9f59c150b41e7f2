"""Issue item 7: damaged files, a full disk and bad arguments give errors naming the file or argument."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch

from qvgen import QuantConfig, load_quantized, save_quantized
from qvgen.apps.cli import main
from qvgen.train.data import load_data_file
from qvgen.train import checkpoint as ck
from qvgen.train.optim import build_optimizer

from rel_helpers import qat_toys, quantized_dit, rewrite_consistently, train_toys


def _truncate(file, keep=0.5):
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def _original(tmp_path_factory):
    path = tmp_path_factory.mktemp("original") / "c"
    save_quantized(quantized_dit(), path)
    return path


@pytest.fixture
def saved(_original, tmp_path):
    shutil.copytree(_original, tmp_path / "c")
    return tmp_path / "c"


@pytest.mark.parametrize("keep", [0.0, 0.003, 0.5, 0.99])
def test_truncated_safetensors(saved, keep):
    _truncate(saved / "model.safetensors", keep)
    with pytest.raises(ValueError, match=r"c/model.safetensors.*(truncated|content hash)"):
        load_quantized(qat_toys.ToyDiT(), saved)


@pytest.mark.parametrize("text", ["{", "", "[]", "null", '{"format_version": 2'])
def test_corrupt_qvgen_json(saved, text):
    (saved / "qvgen.json").write_text(text)
    with pytest.raises(ValueError, match="c/qvgen.json"):
        load_quantized(qat_toys.ToyDiT(), saved)


@pytest.mark.parametrize("key", ["quant_config", "modes", "modules", "phi_ranks"])
def test_missing_keys_in_qvgen_json(saved, key):
    rewrite_consistently(saved, lambda meta: meta.pop(key))
    with pytest.raises(ValueError, match=f"qvgen.json: {key}"):
        load_quantized(qat_toys.ToyDiT(), saved)


def test_bad_quant_config_in_qvgen_json(saved):
    rewrite_consistently(saved, lambda meta: meta["quant_config"].update(w_bits=5))
    with pytest.raises(ValueError, match="qvgen.json: quant_config"):
        load_quantized(qat_toys.ToyDiT(), saved)


@pytest.fixture
def trained(tmp_path):
    model, _ = train_toys.make_pair()
    opt = build_optimizer(model, lr=1e-2)
    ck.save_checkpoint(tmp_path, model, opt, None, None, step=3)
    return tmp_path, model, opt


@pytest.mark.parametrize("name, damage", [("state.pt", "truncate"), ("model.safetensors", "truncate"),
                                          ("meta.json", "truncate"), ("meta.json", "text")])
def test_damaged_training_checkpoint(trained, name, damage):
    out = trained[0]
    file = out / "ckpt-last" / name
    _truncate(file) if damage == "truncate" else file.write_text("not json")
    with pytest.raises(ValueError, match=f"ckpt-last/{name}"):
        ck.load_checkpoint(out / "ckpt-last")


class _FullDisk:
    """A binary file on a disk with ``room`` bytes left."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("room", [0, 100, 1000])
def test_disk_full_during_torch_save(trained, monkeypatch, room):
    out, model, opt = trained
    with torch.no_grad():
        model.inp.weight.add_(1.0)
    monkeypatch.setattr(ck, "open", lambda file, mode="r", **kw: _FullDisk(open(file, mode, **kw), room),
                        raising=False)
    with pytest.raises(OSError, match="state.pt: No space left on device") as info:
        ck.save_checkpoint(out, model, opt, None, None, step=6)
    assert info.value.errno == errno.ENOSPC and "kept" in str(info.value)
    monkeypatch.undo()
    assert ck.load_checkpoint(ck.find_checkpoint(out)).step == 3
    assert sorted(p.name for p in out.iterdir()) == ["ckpt-last"]


def test_bogus_device(tmp_path):
    with pytest.raises(ValueError, match="--device.*'bogus'"):
        main(["train", "--model", str(tmp_path), "--device", "bogus"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device.*'cuda:0'"):
            main(["train", "--model", str(tmp_path), "--device", "cuda:0"])


@pytest.mark.parametrize("content", [b"hello, world\n", b"", b"PK\x03\x04garbage"])
def test_data_file_that_is_not_tensors(tmp_path, content):
    for suffix in (".pt", ".safetensors"):
        path = tmp_path / f"data{suffix}"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"--data.*data{suffix}"):
            load_data_file(path)


@pytest.mark.parametrize("field, value", [("skip", None), ("rank", None), ("skip", "*attn*"), ("skip", [1]),
                                          ("clip_groups", None), ("w_group_size", "64"), ("num_train_timesteps", 1.5)])
def test_quant_config_bad_types(field, value):
    with pytest.raises(ValueError, match=f"argument '{field}'"):
        QuantConfig(**{field: value})


def test_quant_config_from_json_with_nulls():
    with pytest.raises(ValueError, match="'rank'"):
        QuantConfig.from_dict(json.loads('{"rank": null}'))
