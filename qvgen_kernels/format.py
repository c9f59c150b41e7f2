"""The qvgen low-bit format: the contract between the QAT frontend and the kernels.

Every implementation (reference, Triton, C++/CUDA) follows the definitions below bit for bit.

Notation: M tokens (rows of x), K input features, N output features, b bits, P = 2^b - 1.

Codes
    Unsigned integers q in [0, P], b in {3, 4, 8}, stored unpacked as uint8 or packed (below).

Weights (per output channel, or per group of ``group_size`` along K; asymmetric, float zero point)
    q_w[n, k] = clamp(round(W[n, k] / s_w[n] + z_w[n]), 0, P)
    W_hat[n, k] = s_w[n] * (q_w[n, k] - z_w[n])                       s_w, z_w: fp32
    With groups, s_w and z_w are [N, G] and column k uses group k // group_size.

Activations (per token, dynamic, asymmetric, integer zero point, clip pair (c_lo, c_hi) in (0, 1])
    lo = c_lo * min(0, min_k x[m, k])      hi = c_hi * max(0, max_k x[m, k])
    s_x = max((hi - lo) / P, ACT_EPS)
    z_x = clamp(round(-lo / s_x), 0, P)
    q_x = clamp(round(x / s_x) + z_x, 0, P)
    X_hat = s_x * (q_x - z_x)
    All of it in fp32 (inputs are upcast first), IEEE division, in exactly this order.
    The range always contains 0 (a refinement of DESIGN.md's ``lo = c_lo * min_k x``): zero is then
    exactly representable, a constant or all-zero token quantizes to itself within s_x / 2 instead of
    collapsing, and z_x needs no clamp in practice (kept for safety).

Rounding
    Round half to even everywhere (torch.round semantics).

GEMM (a = q_x - z_x is an integer in [-P, P]; r[m] = sum_k a[m, k])
    Y[m, n] = s_x[m] * s_w[n] * (sum_k a[m, k] * q_w[n, k] - z_w[n] * r[m]) + bias[n]
    The integer sums are exact in int32 (K * P_a * P_w < 2^31 is required: ``check_accumulator``);
    only the epilogue is floating point (fp32).
    With weight groups: Y = s_x[m] * sum_g s_w[n, g] * (sum_{k in g} a*q_w - z_w[n, g] * r_g[m]).

Packing (the checkpoint layout; kernels may repack at load time and document their own layout)
    8 bits: identity, [..., K] uint8.
    4 bits: two codes per byte along K, low nibble first: byte j = q[2j] | q[2j+1] << 4.
            Shape [..., ceil(K / 2)].
    3 bits: two bit planes, K padded to a multiple of 8 (K8 = 8 * ceil(K / 8)), concatenated along
            the last dim: shape [..., 3 * K8 / 8].
              plane 0, bytes [0, K8/4):     the low 2 bits; byte j = sum_i (q[4j+i] & 3) << 2i
              plane 1, bytes [K8/4, 3K8/8): bit 2;          byte j = sum_i (q[8j+i] >> 2) << i
            Example, codes [5, 3, 7, 0, 1, 2, 6, 4]: plane 0 = [0b00_11_11_01, 0b00_10_10_01]
            = [0x3D, 0x29]; plane 1 = [0b1100_0101] = [0xC5]; packed = [0x3D, 0x29, 0xC5].
    Padding codes are 0. They leave GEMM results unchanged because the activation side of a padded
    column is a = 0 (the packed activation pads with q_x = z_x, i.e. code z_x).
"""

from __future__ import annotations

from .errors import fail

WEIGHT_BITS = (3, 4, 8)
ACT_BITS = (3, 4, 8, 16)  # 16: activations stay in floating point (weight-only, e.g. W4A16)
PACKED_BITS = (3, 4, 8)
ACT_EPS = 1e-8  # floor of the activation scale: a zero-range token gets s_x = ACT_EPS, codes = z_x
FORMAT_VERSION = 1


def qmax(bits: int) -> int:
    """Largest code P = 2^b - 1."""
    return (1 << bits) - 1


def pack_factor(bits: int) -> int:
    """Number of codes K is padded to a multiple of before packing."""
    return {8: 1, 4: 2, 3: 8}[bits]


def padded_k(k: int, bits: int) -> int:
    f = pack_factor(bits)
    return ((k + f - 1) // f) * f


def packed_width(k: int, bits: int) -> int:
    """Bytes per row of K codes in the checkpoint layout."""
    return padded_k(k, bits) * bits // 8


def check_bits(op: str, arg: str, bits: object, allowed: tuple[int, ...]) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        fail(op, arg, f"one of {allowed}", repr(bits))
    return bits


def check_group_size(op: str, group_size: int, k: int) -> int:
    """-1 means per channel; otherwise a positive divisor of K. Returns the number of groups."""
    if group_size == -1:
        return 1
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        fail(op, "group_size", "-1 (per channel) or a positive int", repr(group_size))
    if k % group_size:
        fail(op, "group_size", f"a divisor of K={k}", group_size)
    return k // group_size


def check_accumulator(op: str, k: int, a_bits: int, w_bits: int) -> None:
    """The integer core is exact in int32 only while K * P_a * P_w < 2^31 (K: the columns summed into one
    accumulator, the group size with weight groups); beyond it the sum would wrap. a_bits = 16 (weight
    only) has no integer core."""
    if a_bits == 16:
        return
    bound = k * qmax(a_bits) * qmax(w_bits)
    if bound >= 1 << 31:
        limit = ((1 << 31) - 1) // (qmax(a_bits) * qmax(w_bits))
        fail(op, "k", f"at most {limit} columns per int32 accumulator at W{w_bits}A{a_bits} "
             f"(K * {qmax(a_bits)} * {qmax(w_bits)} < 2^31; use weight groups to split K)", k)


def num_bytes(n: int, k: int, bits: int) -> int:
    return n * packed_width(k, bits)


__all__ = [
    "ACT_BITS", "ACT_EPS", "FORMAT_VERSION", "PACKED_BITS", "WEIGHT_BITS", "check_accumulator", "check_bits",
    "check_group_size", "num_bytes", "pack_factor", "packed_width", "padded_k", "qmax",
]
