"""Tensor-core layout of the Triton GEMM (made once at load from the checkpoint format) and its inverse.

The GEMM computes Y^T = W . X^T so that the low-bit weight is the register operand of the 8-bit MMA
(wgmma on sm_90 takes operand A from registers, operand B from shared memory; mma.sync takes both from
registers): the 4-bit weight is unpacked in registers with two bitwise ops and never goes through shared
memory in unpacked form, while the activation tile is already int8 and goes to shared memory as is.

Weights, ``w_bits`` 3 or 4 ("nibble" layout, 4 bits per weight at rest)
    uint8 ``[NP / 2, KP]``, NP = N rounded up to a multiple of 128 (``ROW_BLOCK``), KP = K rounded up to a
    multiple of 128 (``K_ALIGN``). Rows pair up across N inside each block of 128 rows:
        byte[64 p + i, k] = q[128 p + i, k] | q[128 p + 64 + i, k] << 4        (i < 64)
    so a [64, BK] byte tile gives the two [64, BK] int8 weight tiles of rows 128p + [0, 64) (``b & 15``) and
    128p + [64, 128) (``b >> 4``) with the same K order as the activations: no permutation on either side,
    any K tile (>= 32) and any group size that is a multiple of 32. 3-bit codes (checkpoint: bit planes)
    are stored in the same nibbles (they are what the kernel reads; the checkpoint stays 3-bit).
Weights, ``w_bits`` 8
    int8 ``[NP, KP]`` = q - 128 (the MMA is signed; the 128 comes back in the epilogue).
Padding (rows >= N, columns >= K) holds 0 in both layouts.
Weight constants, made with the layout
    colsum int32 ``[N, G]``: sum over the group's columns of the codes q (only the 8-bit-activation
    correction reads it), scale and zero fp32 ``[N, G]`` (G = 1 per channel).

Activations (``quantize_act_i8``): int8 ``[M, KP]``, K-contiguous, a8 = q - z (3/4 bits, exact) or q - 128
(8 bits: q - z spans [-255, 255]); padding columns 0. Integer identity of the epilogue, per group g of
columns (per channel: one group of K columns), with c = 128 for 8-bit weights (else 0) and e = 128 - z for
8-bit activations (else 0), S = sum_{k in g} a8:
    sum_k (q_x - z_x) q_w = dot(a8, w8) + c S + e colsum[n, g],    r_g = sum_k (q_x - z_x) = S + e |g|
(padding columns hold a8 = w8 = 0 and contribute nothing to either side).
"""

from __future__ import annotations

import torch

from ..reference.pack import pack, unpack

ROW_BLOCK = 128   # weight rows per nibble block (two halves of 64: the MMA's M)
K_ALIGN = 128     # K padding of both operands: every GEMM K tile (32, 64 or 128) divides it
CHUNK = 32        # activation row sums are kept per 32 columns (the smallest group size the GEMM takes)


def round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def kernel_k(k: int) -> int:
    """KP: K as both GEMM operands store it."""
    return round_up(k, K_ALIGN)


def _codes_padded(w_packed: torch.Tensor, bits: int, n: int, k: int) -> torch.Tensor:
    """uint8 codes [NP, KP] of the checkpoint rows, zero padded."""
    codes = torch.zeros(round_up(n, ROW_BLOCK), kernel_k(k), dtype=torch.uint8, device=w_packed.device)
    codes[:n, :k] = unpack(w_packed, bits, k)
    return codes


def repack_weight(w_packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Checkpoint layout uint8 [N, packed_width(k, bits)] -> the kernel layout above."""
    n = w_packed.shape[0]
    codes = _codes_padded(w_packed, bits, n, k)
    if bits == 8:
        return (codes.to(torch.int16) - 128).to(torch.int8).masked_fill_(_pad_mask(codes, n, k), 0)
    blocks = codes.view(-1, 2, ROW_BLOCK // 2, codes.shape[1])          # [NP/128, half, 64, KP]
    return (blocks[:, 0] | (blocks[:, 1] << 4)).reshape(-1, codes.shape[1])


def _pad_mask(codes: torch.Tensor, n: int, k: int) -> torch.Tensor:
    mask = torch.ones_like(codes, dtype=torch.bool)
    mask[:n, :k] = False
    return mask


def weight_codes(w_kernel: torch.Tensor, bits: int, n: int, k: int) -> torch.Tensor:
    """Inverse of ``repack_weight`` up to the checkpoint packing: uint8 codes [N, K]."""
    if bits == 8:
        return (w_kernel[:n, :k].to(torch.int16) + 128).to(torch.uint8)
    halves = torch.stack((w_kernel & 15, w_kernel >> 4), dim=1)          # [NP/2 / 64 * 64, 2, KP] by rows
    blocks = halves.view(-1, ROW_BLOCK // 2, 2, w_kernel.shape[1]).transpose(1, 2)
    return blocks.reshape(-1, w_kernel.shape[1])[:n, :k].contiguous()


def checkpoint_codes(w_kernel: torch.Tensor, bits: int, n: int, k: int) -> torch.Tensor:
    """The checkpoint layout uint8 [N, packed_width(k, bits)] of a kernel layout: what a deployed layer that
    holds only the kernel layout saves (exact inverse of ``repack_weight``)."""
    return pack(weight_codes(w_kernel, bits, n, k), bits)


def weight_colsum(w_packed: torch.Tensor, bits: int, k: int, groups: int) -> torch.Tensor:
    """int32 [N, G]: per group, the sum of the codes over the group's columns."""
    codes = unpack(w_packed, bits, k).to(torch.int32)
    return codes.view(codes.shape[0], groups, k // groups).sum(-1, dtype=torch.int32)


__all__ = ["CHUNK", "checkpoint_codes", "K_ALIGN", "ROW_BLOCK", "kernel_k", "repack_weight", "round_up", "weight_codes",
           "weight_colsum"]
