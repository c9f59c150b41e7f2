"""pack / unpack: round trips (3/4/8 bits, any K, leading dims), the format's worked example, layout."""

from __future__ import annotations

import random

import pytest
import torch

from qvgen_kernels import ops
from qvgen_kernels.format import packed_width
from qvgen_kernels.reference import pack as ref_pack
from qvgen_kernels.reference import unpack as ref_unpack
from tests._utils import random_codes

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # the GPU check's image has no hypothesis: the same property over a fixed random sweep
    given = None


def _round_trip(bits: int, k: int, lead: list[int], seed: int) -> None:
    codes = random_codes((*lead, k), bits, torch.Generator().manual_seed(seed))
    packed = ops.pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (*lead, packed_width(k, bits))
    assert torch.equal(ops.unpack(packed, bits, k), codes)


if given is not None:
    @settings(max_examples=60, deadline=None)
    @given(bits=st.sampled_from([3, 4, 8]), k=st.integers(1, 70),
           lead=st.lists(st.integers(0, 3), max_size=2), seed=st.integers(0, 2**31 - 1))
    def test_round_trip_property(bits: int, k: int, lead: list[int], seed: int) -> None:
        _round_trip(bits, k, lead, seed)
else:
    _rng = random.Random(0)
    _SWEEP = [(_rng.choice([3, 4, 8]), _rng.randint(1, 70), [_rng.randint(0, 3) for _ in range(_rng.randint(0, 2))],
               _rng.randint(0, 2**31 - 1)) for _ in range(60)]

    @pytest.mark.parametrize("bits,k,lead,seed", _SWEEP)
    def test_round_trip_property(bits: int, k: int, lead: list[int], seed: int) -> None:
        _round_trip(bits, k, lead, seed)


def test_round_trip_backend(backend: str) -> None:
    gen = torch.Generator().manual_seed(3)
    for bits in (3, 4, 8):
        for k in (1, 7, 8, 9, 33):
            codes = random_codes((5, k), bits, gen)
            packed = ops.pack(codes, bits, backend=backend)
            assert torch.equal(packed, ref_pack(codes, bits))
            assert torch.equal(ops.unpack(packed, bits, k, backend=backend), codes)


def test_three_bit_worked_example() -> None:
    codes = torch.tensor([5, 3, 7, 0, 1, 2, 6, 4], dtype=torch.uint8)
    packed = ops.pack(codes, 3)
    assert packed.tolist() == [0x3D, 0x29, 0xC5]
    assert ops.unpack(packed, 3, 8).tolist() == codes.tolist()


def _bitwise_pack(codes: list[int], bits: int) -> list[int]:
    """Independent bit-by-bit packer written from format.py's prose (one row)."""
    if bits == 8:
        return list(codes)
    if bits == 4:
        c = codes + [0] * (len(codes) % 2)
        return [c[2 * j] | (c[2 * j + 1] << 4) for j in range(len(c) // 2)]
    c = codes + [0] * (-len(codes) % 8)
    plane0 = [sum((c[4 * j + i] & 3) << (2 * i) for i in range(4)) for j in range(len(c) // 4)]
    plane1 = [sum((c[8 * j + i] >> 2) << i for i in range(8)) for j in range(len(c) // 8)]
    return plane0 + plane1


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("k", [1, 5, 8, 13, 64])
def test_layout_matches_bitwise_spec(bits: int, k: int) -> None:
    codes = random_codes((k,), bits, torch.Generator().manual_seed(k * 10 + bits))
    assert ops.pack(codes, bits).tolist() == _bitwise_pack(codes.tolist(), bits)


@pytest.mark.parametrize("bits", [3, 4])
def test_padding_codes_are_zero(bits: int) -> None:
    # All-max codes with K not a multiple of the pack factor: the padded slots must unpack as 0.
    k = 5
    codes = torch.full((2, k), (1 << bits) - 1, dtype=torch.uint8)
    packed = ops.pack(codes, bits)
    full = ref_unpack(packed, bits, packed_width(k, bits) * 8 // bits)
    assert torch.equal(full[:, :k], codes) and not full[:, k:].any()


def test_extreme_codes_and_non_contiguous() -> None:
    codes = torch.tensor([[0, 15, 15, 0, 7, 8, 0, 15, 1]] * 3, dtype=torch.uint8).T.contiguous().T
    assert not codes.is_contiguous()
    assert torch.equal(ops.unpack(ops.pack(codes, 4), 4, 9), codes)


def test_8bit_pack_is_a_copy() -> None:
    codes = torch.arange(10, dtype=torch.uint8)
    packed = ops.pack(codes, 8)
    packed[0] = 99
    assert codes[0] == 0


@pytest.mark.parametrize("call, arg, exc, fragment", [
    (lambda: ops.pack(torch.zeros(4, dtype=torch.int32), 4), "codes", TypeError, "torch.uint8"),
    (lambda: ops.pack([1, 2], 4), "codes", TypeError, "torch.Tensor"),
    (lambda: ops.pack(torch.zeros(4, dtype=torch.uint8), 5), "bits", ValueError, "(3, 4, 8)"),
    (lambda: ops.pack(torch.zeros(4, dtype=torch.uint8), True), "bits", ValueError, "True"),
    (lambda: ops.pack(torch.tensor([1, 8], dtype=torch.uint8), 3), "codes", ValueError, "[0, 7]"),
    (lambda: ops.pack(torch.tensor(3, dtype=torch.uint8), 4), "codes", ValueError, "at least 1"),
    (lambda: ops.unpack(torch.zeros(2, 3, dtype=torch.uint8), 4, 7), "packed", ValueError, "= 4"),
    (lambda: ops.unpack(torch.zeros(2, 3, dtype=torch.uint8), 4, 0), "k", ValueError, "positive"),
    (lambda: ops.unpack(torch.zeros(2, 3, dtype=torch.float32), 4, 6), "packed", TypeError, "uint8"),
    (lambda: ref_pack(torch.tensor([16], dtype=torch.uint8), 4), "codes", ValueError, "[0, 15]"),
    (lambda: ref_unpack(torch.zeros(2, 3, dtype=torch.uint8), 3, 9), "packed", ValueError, "= 6"),
])
def test_bad_input(call, arg: str, exc: type, fragment: str) -> None:
    with pytest.raises(exc) as info:
        call()
    text = str(info.value)
    assert ("pack:" in text or "unpack:" in text) and f"'{arg}'" in text and fragment in text, text
