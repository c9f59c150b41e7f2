"""Pack / unpack low-bit codes in the checkpoint layout of ``qvgen_kernels.format`` (pure torch).

Notation: codes are uint8 ``[..., K]`` with values in ``[0, P]``, ``P = 2^bits - 1``.

Layouts (see format.py for the worked 3-bit example):
    8 bits: identity.
    4 bits: byte j = q[2j] | q[2j+1] << 4 (low nibble first), shape ``[..., ceil(K/2)]``.
    3 bits: K padded to K8 = 8*ceil(K/8); plane 0 holds the low 2 bits, four codes per byte; plane 1
            holds bit 2, eight codes per byte; the planes are concatenated: ``[..., 3*K8/8]``.
All three are one primitive: pack fields of ``width`` bits, ``8 // width`` per byte, lowest field first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..format import PACKED_BITS, check_bits, packed_width, padded_k, qmax

from ..errors import fail


def _pack_fields(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pack uint8 ``values < 2^width`` along the last dim, ``8 // width`` per byte, first value lowest."""
    per_byte = 8 // width
    shifts = torch.arange(0, 8, width, dtype=torch.uint8, device=values.device)
    fields = values.reshape(*values.shape[:-1], values.shape[-1] // per_byte, per_byte) << shifts
    # The fields occupy disjoint bits, so their sum is their bitwise OR (sum promotes, hence the cast).
    return fields.sum(dim=-1).to(torch.uint8)


def _unpack_fields(packed: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of ``_pack_fields``: ``[..., B]`` bytes -> ``[..., B * 8 // width]`` values."""
    shifts = torch.arange(0, 8, width, dtype=torch.uint8, device=packed.device)
    fields = (packed.unsqueeze(-1) >> shifts) & ((1 << width) - 1)
    return fields.reshape(*packed.shape[:-1], packed.shape[-1] * (8 // width))


def _check_uint8(op: str, arg: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        fail(op, arg, "a torch.Tensor", type(t).__name__, TypeError)
    if t.dtype != torch.uint8:
        fail(op, arg, "dtype torch.uint8", t.dtype, TypeError)
    if t.dim() < 1:
        fail(op, arg, "at least 1 dimension", f"shape {tuple(t.shape)}")
    return t


def check_codes_range(op: str, arg: str, codes: torch.Tensor, bits: int) -> None:
    """Codes above P cannot be stored in ``bits`` bits: an error rather than silent truncation."""
    if codes.numel() and int(codes.max()) > qmax(bits):
        fail(op, arg, f"codes in [0, {qmax(bits)}] for bits={bits}", f"max code {int(codes.max())}")


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes ``[..., K]`` -> packed uint8 ``[..., packed_width(K, bits)]`` (padding codes are 0)."""
    _check_uint8("pack", "codes", codes)
    check_bits("pack", "bits", bits, PACKED_BITS)
    check_codes_range("pack", "codes", codes, bits)
    k = codes.shape[-1]
    padded = F.pad(codes, (0, padded_k(k, bits) - k)) if padded_k(k, bits) != k else codes
    if bits == 8:
        return padded.contiguous().clone()
    if bits == 4:
        return _pack_fields(padded, 4)
    return torch.cat([_pack_fields(padded & 3, 2), _pack_fields(padded >> 2, 1)], dim=-1)


def unpack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Packed uint8 ``[..., packed_width(k, bits)]`` -> uint8 codes ``[..., k]``."""
    _check_uint8("unpack", "packed", packed)
    check_bits("unpack", "bits", bits, PACKED_BITS)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        fail("unpack", "k", "a positive int", repr(k))
    if packed.shape[-1] != packed_width(k, bits):
        fail("unpack", "packed", f"last dim packed_width(k={k}, bits={bits}) = {packed_width(k, bits)}",
             f"shape {tuple(packed.shape)}")
    if bits == 8:
        return packed.contiguous().clone()
    if bits == 4:
        codes = _unpack_fields(packed, 4)
    else:
        split = padded_k(k, 3) // 4  # plane 0 has K8/4 bytes
        codes = _unpack_fields(packed[..., :split], 2) | (_unpack_fields(packed[..., split:], 1) << 2)
    return codes[..., :k].contiguous()


__all__ = ["check_codes_range", "pack", "unpack"]
