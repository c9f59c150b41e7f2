"""Shared pieces of the Triton kernels: device-side helpers (rounding, activation qparams, code
unpacking from the checkpoint layout) and host-side argument checks.

Device helpers avoid libdevice and inline asm so every kernel also runs under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..format import check_bits, packed_width

from ..errors import fail

# 1.5 * 2^23: adding and subtracting it rounds an fp32 value half-to-even, valid for |x| < 2^22.
_MAGIC = tl.constexpr(12582912.0)
# Pre-rounding values are clamped into [-_ROUND_LIMIT, _ROUND_LIMIT]. Every result is clamped into
# [0, 255] afterwards, so the clamp never changes an outcome and keeps the magic trick in range.
_ROUND_LIMIT = tl.constexpr(1024.0)


@triton.jit
def round_half_even(x):
    """torch.round of fp32 ``x`` for |x| <= _ROUND_LIMIT (callers clamp first)."""
    return (x + _MAGIC) - _MAGIC


@triton.jit
def round_clamped(x):
    """round_half_even of x clamped to +-_ROUND_LIMIT: the same code after a final clamp to [0, P]."""
    return round_half_even(tl.minimum(tl.maximum(x, -_ROUND_LIMIT), _ROUND_LIMIT))


@triton.jit
def act_qparams(mn, mx, clip_lo, clip_hi, P: tl.constexpr, EPS: tl.constexpr):
    """Per-token (lo, hi, scale, zero) from the row min/max, in format.py's order (fp32, IEEE div).

    ``mn``/``mx`` are the raw row min/max; the range is widened to contain 0 here.
    """
    lo = clip_lo * tl.minimum(mn, 0.0)
    hi = clip_hi * tl.maximum(mx, 0.0)
    scale = tl.maximum(tl.math.div_rn(hi - lo, tl.full(lo.shape, P, tl.float32)), EPS)
    zero = round_clamped(tl.math.div_rn(-lo, scale))
    zero = tl.minimum(tl.maximum(zero, 0.0), P)
    return lo, hi, scale, zero


@triton.jit
def act_codes(x, scale, zero, P: tl.constexpr):
    """Activation codes as fp32 (exact small integers) and the STE pass mask (rounded value in range)."""
    v = round_clamped(tl.math.div_rn(x, scale)) + zero
    inside = (v >= 0.0) & (v <= P)
    return tl.minimum(tl.maximum(v, 0.0), P), inside


@triton.jit
def unpack_codes(row_ptr, k, mask, K8, BITS: tl.constexpr):
    """Codes (int32) at columns ``k`` of packed rows starting at ``row_ptr`` (checkpoint layout).

    Gathers the byte of each column (neighbouring columns share a byte, so the same cache line is
    read twice) and extracts the field; masked columns read as 0.
    """
    if BITS == 8:
        code = tl.load(row_ptr + k, mask=mask, other=0).to(tl.int32)
    elif BITS == 4:
        byte = tl.load(row_ptr + k // 2, mask=mask, other=0).to(tl.int32)
        code = (byte >> ((k % 2) * 4)) & 15
    else:
        low = tl.load(row_ptr + k // 4, mask=mask, other=0).to(tl.int32)
        high = tl.load(row_ptr + K8 // 4 + k // 8, mask=mask, other=0).to(tl.int32)
        code = ((low >> ((k % 4) * 2)) & 3) | (((high >> (k % 8)) & 1) << 2)
    return code


@triton.jit
def pack_and_store(out_row_ptr, codes, row_mask, k0, K8, BM: tl.constexpr, BK: tl.constexpr,
                   BITS: tl.constexpr):
    """Pack an int32 code tile [BM, BK] covering columns [k0, k0 + BK) and store its bytes.

    ``out_row_ptr`` is [BM, 1] (row starts); BK is a multiple of 8 and k0 of BK, so bytes never
    straddle tiles. Columns >= K8 are not stored. Distinct bit fields make sum equal to OR.
    """
    if BITS == 8:
        cols = k0 + tl.arange(0, BK)
        tl.store(out_row_ptr + cols[None, :], codes.to(tl.uint8),
                 mask=row_mask & (cols[None, :] < K8))
    elif BITS == 4:
        shift = (tl.arange(0, 2) * 4)[None, None, :]
        byte = tl.sum(tl.reshape(codes, (BM, BK // 2, 2)) << shift, axis=2)
        cols = k0 // 2 + tl.arange(0, BK // 2)
        tl.store(out_row_ptr + cols[None, :], byte.to(tl.uint8),
                 mask=row_mask & (cols[None, :] < K8 // 2))
    else:
        shift2 = (tl.arange(0, 4) * 2)[None, None, :]
        plane0 = tl.sum(tl.reshape(codes & 3, (BM, BK // 4, 4)) << shift2, axis=2)
        cols0 = k0 // 4 + tl.arange(0, BK // 4)
        tl.store(out_row_ptr + cols0[None, :], plane0.to(tl.uint8),
                 mask=row_mask & (cols0[None, :] < K8 // 4))
        shift1 = tl.arange(0, 8)[None, None, :]
        plane1 = tl.sum(tl.reshape(codes >> 2, (BM, BK // 8, 8)) << shift1, axis=2)
        cols1 = k0 // 8 + tl.arange(0, BK // 8)
        tl.store(out_row_ptr + K8 // 4 + cols1[None, :], plane1.to(tl.uint8),
                 mask=row_mask & (cols1[None, :] < K8 // 8))


# ----------------------------------------------------------------------------------------- host side


# Read once, when the kernels of this package are defined: that is when Triton decides between the
# interpreter and compilation, so later changes of the environment variable do not apply to them.
_INTERPRET = bool(triton.knobs.runtime.interpret)


def interpreting() -> bool:
    """True when this package's kernels run through Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return _INTERPRET


def check_tensor(op: str, arg: str, t: object, *, ndim: int | None = None,
                 dtypes: tuple[torch.dtype, ...] | None = None) -> torch.Tensor:
    """Type, rank, dtype and device checks shared by every Triton entry point."""
    if not isinstance(t, torch.Tensor):
        fail(op, arg, "a torch.Tensor", type(t).__name__, TypeError)
    if ndim is not None and t.dim() != ndim:
        fail(op, arg, f"a {ndim}-D tensor", f"shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        fail(op, arg, f"dtype in {[str(d) for d in dtypes]}", t.dtype, TypeError)
    if interpreting():
        if t.device.type != "cpu":
            fail(op, arg, "a CPU tensor under TRITON_INTERPRET=1", t.device)
    elif t.device.type != "cuda":
        fail(op, arg, "a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors)", t.device)
    return t


def check_same_device(op: str, ref: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            fail(op, name, f"a tensor on {ref.device}", t.device)


def check_vector(op: str, arg: str, t: object, length: int, dtypes: tuple[torch.dtype, ...],
                 ref: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor of ``length`` on ``ref``'s device, made contiguous."""
    check_tensor(op, arg, t, ndim=1, dtypes=dtypes)
    if t.shape[0] != length:
        fail(op, arg, f"shape ({length},)", f"shape {tuple(t.shape)}")
    check_same_device(op, ref, **{arg: t})
    return t.contiguous()


def check_packed(op: str, arg: str, t: object, rows: int | None, k: int, bits: int) -> torch.Tensor:
    """A 2-D uint8 tensor of packed rows of K codes (checkpoint layout), made contiguous."""
    check_tensor(op, arg, t, ndim=2, dtypes=(torch.uint8,))
    width = packed_width(k, bits)
    if t.shape[1] != width or (rows is not None and t.shape[0] != rows):
        want = f"({rows if rows is not None else 'rows'}, {width}) for k={k}, bits={bits}"
        fail(op, arg, f"shape {want}", f"shape {tuple(t.shape)}")
    return t.contiguous()


def check_k(op: str, k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        fail(op, "k", "a positive int", repr(k))
    return k


def empty_out(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Buffer a kernel stores its ``dtype`` result into; finish with ``.to(dtype)``.

    Under the interpreter a bf16 result is stored as fp32 and cast by torch: the interpreter's
    fp32 -> bf16 conversion truncates instead of rounding to nearest even.
    """
    if interpreting() and dtype == torch.bfloat16:
        dtype = torch.float32
    return torch.empty(shape, dtype=dtype, device=device)


FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def check_act_inputs(op: str, x: object, bits: int, clip_lo: object, clip_hi: object
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the per-token activation inputs (x [M, K >= 1] float, clips [M]) shared by the quantize and
    fake-quant launchers; returns (x, clip_lo fp32, clip_hi fp32). Clips are upcast like the reference does."""
    check_bits(op, "bits", bits, (3, 4, 8))
    check_tensor(op, "x", x, ndim=2, dtypes=FLOATS)
    m, k = x.shape
    if k == 0:
        fail(op, "x", "K >= 1 columns", f"shape {tuple(x.shape)}")
    clo = check_vector(op, "clip_lo", clip_lo, m, FLOATS, x).float()
    chi = check_vector(op, "clip_hi", clip_hi, m, FLOATS, x).float()
    return x, clo, chi
