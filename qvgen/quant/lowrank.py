"""The auxiliary low-rank module Phi = L @ R: initialisation from the SVD of the quantization error and the
re-split used at rank-decay stage boundaries. Everything is computed in fp32."""

from __future__ import annotations

import torch

from qvgen_kernels.errors import fail

# "auto" switches to the randomized SVD above this size of min(N, K).
RANDOMIZED_MIN_DIM = 1024
_OVERSAMPLE = 8
_POWER_ITERS = 4


def _split(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    root = s.clamp_min(0.0).sqrt()
    return u * root, root[:, None] * vh


def init_phi(residual: torch.Tensor, rank: int, method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-`rank` truncated SVD of residual [N, K] split as L = U sqrt(S) [N, r], R = sqrt(S) Vh [r, K].

    method: "exact" (torch.linalg.svd), "randomized" (torch.svd_lowrank with power iterations) or "auto"
    (randomized when min(N, K) > 1024). When rank > min(N, K) the extra columns/rows are zero, so every
    layer of a model has the same Phi width. Returns fp32 tensors on residual's device.
    """
    op = "init_phi"
    if not isinstance(residual, torch.Tensor) or residual.dim() != 2:
        fail(op, "residual", "a 2-D tensor [N, K]", getattr(residual, "shape", type(residual).__name__))
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        fail(op, "rank", "a positive int", repr(rank))
    if method not in ("auto", "exact", "randomized"):
        fail(op, "method", "'auto', 'exact' or 'randomized'", repr(method))
    a = residual.detach().float()
    n, k = a.shape
    r = min(rank, n, k)
    if method == "auto":
        method = "randomized" if min(n, k) > RANDOMIZED_MIN_DIM else "exact"
    if method == "exact" or r + _OVERSAMPLE >= min(n, k):
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
    else:
        u, s, v = torch.svd_lowrank(a, q=r + _OVERSAMPLE, niter=_POWER_ITERS)
        vh = v.mT
    l_r, r_r = _split(u[:, :r], s[:r], vh[:r])
    big_l = torch.zeros(n, rank, dtype=torch.float32, device=a.device)
    big_r = torch.zeros(rank, k, dtype=torch.float32, device=a.device)
    big_l[:, :r], big_r[:r] = l_r, r_r
    return big_l, big_r


def resvd(l: torch.Tensor, r: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-split P = L[:, :rank] @ R[:rank] into its SVD factors (sqrt split), ordered by singular value.

    The product is kept (up to fp32 rounding). Computed through QR of the thin factors, so the cost is
    O((N + K) rank^2) instead of an SVD of the full N x K product. Returns fp32 [N, rank], [rank, K].
    """
    op = "resvd"
    if l.dim() != 2 or r.dim() != 2 or l.shape[1] != r.shape[0]:
        fail(op, "l, r", "factors [N, r] and [r, K]", (tuple(l.shape), tuple(r.shape)))
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= l.shape[1]:
        fail(op, "rank", f"an int in [1, {l.shape[1]}]", repr(rank))
    lk = l[:, :rank].detach().float()
    rk = r[:rank].detach().float()
    q1, t1 = torch.linalg.qr(lk)       # lk = q1 t1
    q2, t2 = torch.linalg.qr(rk.mT)    # rk = t2^T q2^T
    u, s, vh = torch.linalg.svd(t1 @ t2.mT, full_matrices=False)
    new_l, new_r = _split(q1 @ u, s, vh @ q2.mT)
    if new_l.shape[1] < rank:  # N or K smaller than rank: pad with zero components
        pad = rank - new_l.shape[1]
        new_l = torch.cat([new_l, new_l.new_zeros(new_l.shape[0], pad)], 1)
        new_r = torch.cat([new_r, new_r.new_zeros(pad, new_r.shape[1])], 0)
    return new_l, new_r


__all__ = ["RANDOMIZED_MIN_DIM", "init_phi", "resvd"]


class PhiView:
    """The read side of Φ shared by the QAT and the deployed layer (a mixin): its ranks and its product.

    The layer holds ``phi_l [N, C]``, ``phi_r [C, K]``, ``phi_gamma [C]`` (None once Φ is removed) and
    ``_phi_active``, the number of columns of the current rank-decay stage (C is fixed from quantization to
    removal, so a live graph, DDP or FSDP2 never sees a shape change).
    """

    phi_l: torch.Tensor | None
    phi_r: torch.Tensor | None
    phi_gamma: torch.Tensor | None
    _phi_active: int

    @property
    def phi_rank(self) -> int:
        """Number of nonzero gamma entries (0 when Phi is removed)."""
        return 0 if self.phi_gamma is None else int((self.phi_gamma != 0).sum())

    @property
    def phi_width(self) -> int:
        """Active Phi columns: the current rank-decay stage's rank (0 when removed or fully decayed)."""
        return 0 if self.phi_l is None else self._phi_active

    @property
    def phi_capacity(self) -> int:
        """Allocated Phi columns (fixed from quantization to removal; 0 when removed)."""
        return 0 if self.phi_l is None else self.phi_l.shape[1]

    def _phi(self, x_hat: torch.Tensor) -> torch.Tensor:
        # (L * gamma) (R x) over the active columns only: two thin GEMMs, no N x K product materialised.
        # Slicing keeps the Parameters whole (their gradients are full-width, zero past the active columns),
        # and a width of 0 still gives every factor a (zero) gradient, as DDP expects.
        w = self._phi_active
        l = self.phi_l[:, :w] * self.phi_gamma[:w].to(self.phi_l.dtype)
        return torch.nn.functional.linear(torch.nn.functional.linear(x_hat.to(self.phi_l.dtype), self.phi_r[:w]), l)
