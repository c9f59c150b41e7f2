"""Issue item 5: qvgen.json is tied to model.safetensors, and damaged bytes never load silently."""

from __future__ import annotations

import random
import shutil

import pytest
import torch

from qvgen import load_quantized, save_quantized
from qvgen.train import checkpoint as ck
from qvgen.train.optim import build_optimizer

from rel_helpers import dit_output, qat_toys, quantized_dit, train_toys


def _flip(file, offset, mask=0xFF):
    data = bytearray(file.read_bytes())
    data[offset] ^= mask
    file.write_bytes(bytes(data))


def _data_start(file) -> int:
    return 8 + int.from_bytes(file.read_bytes()[:8], "little")


def test_a_config_copied_from_another_checkpoint_is_refused(tmp_path):
    save_quantized(quantized_dit(preset="w4a4"), tmp_path / "a4")
    save_quantized(quantized_dit(preset="w4a8"), tmp_path / "a8")
    shutil.copy(tmp_path / "a8" / "qvgen.json", tmp_path / "a4" / "qvgen.json")
    with pytest.raises(ValueError, match=r"a4/qvgen.json.*a_bits: 8 \(qvgen.json\) vs 4 \(model.safetensors\)"):
        load_quantized(qat_toys.ToyDiT(), tmp_path / "a4")


def test_flipped_tensor_bytes_are_refused(tmp_path):
    save_quantized(quantized_dit(), tmp_path / "c")
    weights = tmp_path / "c" / "model.safetensors"
    _flip(weights, _data_start(weights) + 100, mask=0x01)
    with pytest.raises(ValueError, match=r"model.safetensors.*tensor '.*' with the content hash"):
        load_quantized(qat_toys.ToyDiT(), tmp_path / "c")


def _outcome(load, expected, file) -> str:
    """'error' (a ValueError naming the file), 'same' (identical result), or what went wrong."""
    try:
        got = load()
    except ValueError as e:
        return "error" if str(file.parent) in str(e) else f"unnamed error: {e}"
    except Exception as e:  # noqa: BLE001 - any other exception is an unclear error
        return f"unclear {type(e).__name__}: {e}"
    return "same" if torch.equal(got, expected) else "silent wrong result"


def test_byte_flips_anywhere_in_a_quantized_checkpoint(tmp_path):
    model = quantized_dit()
    save_quantized(model, tmp_path / "good")
    expected, rng = dit_output(model), random.Random(0)
    outcomes = {}
    for name in ("model.safetensors", "qvgen.json"):
        size = (tmp_path / "good" / name).stat().st_size
        for offset in rng.sample(range(size), 40):
            folder = tmp_path / f"{name}-{offset}"
            shutil.copytree(tmp_path / "good", folder)
            _flip(folder / name, offset, mask=rng.randrange(1, 256))
            out = _outcome(lambda: dit_output(load_quantized(qat_toys.ToyDiT(), folder)), expected, folder / name)
            outcomes.setdefault(out, []).append((name, offset))
            shutil.rmtree(folder)
    print("byte flips:", {k: len(v) for k, v in outcomes.items()})
    assert set(outcomes) <= {"error", "same"}, {k: v[:3] for k, v in outcomes.items()}


def test_byte_flips_in_a_training_checkpoint(tmp_path):
    model, _ = train_toys.make_pair()
    ck.save_checkpoint(tmp_path / "good", model, build_optimizer(model, lr=1e-2), None, None, step=2)
    good = ck.load_checkpoint(tmp_path / "good" / "ckpt-last")
    rng, outcomes = random.Random(1), {}

    def load(folder):
        got = ck.load_checkpoint(folder)
        same = got.state == good.state and all(torch.equal(got.model_state[k], v) for k, v in good.model_state.items())
        return torch.tensor(float(same))

    for name in ("model.safetensors", "state.pt", "meta.json"):
        size = (tmp_path / "good" / "ckpt-last" / name).stat().st_size
        for offset in rng.sample(range(size), 20):
            folder = tmp_path / f"{name}-{offset}"
            shutil.copytree(tmp_path / "good" / "ckpt-last", folder)
            _flip(folder / name, offset, mask=rng.randrange(1, 256))
            out = _outcome(lambda: load(folder), torch.tensor(1.0), folder / name)
            outcomes.setdefault(out, []).append((name, offset))
            shutil.rmtree(folder)
    print("training checkpoint byte flips:", {k: len(v) for k, v in outcomes.items()})
    assert set(outcomes) <= {"error", "same"}, {k: v[:3] for k, v in outcomes.items()}
