"""Shared test helpers: verbose closeness, SQNR, seeding, readable parametrize ids, grid data."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_all(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a torch CPU generator with the same seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, *, atol: float = 0.0,
                         rtol: float = 0.0, max_print: int = 5, msg: str = "") -> None:
    """``|a - e| <= atol + rtol * |e|`` elementwise, with NaN/Inf parity; on failure, report the
    mismatch count, the max abs diff and the first mismatches (index, actual, expected)."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{msg} shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    same_special = (torch.isnan(a) & torch.isnan(e)) | (torch.isinf(a) & (a == e))
    close = (a - e).abs() <= atol + rtol * e.abs()
    bad = ~(close | same_special)
    if bad.any():
        idx = bad.nonzero()[:max_print].tolist()
        lines = [f"  {tuple(i)}: actual {a[tuple(i)].item()!r}, expected {e[tuple(i)].item()!r}" for i in idx]
        diff = (a - e).abs()[bad & torch.isfinite(a) & torch.isfinite(e)]
        worst = diff.max().item() if diff.numel() else float("nan")
        raise AssertionError(f"{msg} {int(bad.sum())}/{bad.numel()} mismatched (atol={atol}, rtol={rtol}, "
                             f"max abs diff {worst})\n" + "\n".join(lines))


def sqnr(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``20 log10(||ref|| / ||ref - approx||)``."""
    ref, err = reference.double(), reference.double() - approx.double()
    return float(20 * torch.log10(ref.norm() / err.norm().clamp_min(1e-300)))


def id_formatter(name: str):
    """``ids=`` callable giving ``name=value`` test ids."""
    def fmt(value: object) -> str:
        return f"{name}={str(value).replace('torch.', '')}"
    return fmt


def random_codes(shape: tuple[int, ...], bits: int, gen: torch.Generator) -> torch.Tensor:
    """Uniform uint8 codes in [0, 2^bits - 1]."""
    return torch.randint(0, 1 << bits, shape, generator=gen, dtype=torch.uint8)
