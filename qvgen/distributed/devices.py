"""The device a command runs on: "auto" or a named device that must exist here."""

from __future__ import annotations

import torch

from qvgen_kernels.errors import fail


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; otherwise the named device, which must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    expected = "'auto', 'cpu', 'cuda' or 'cuda:N' (a device present on this machine)"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        fail("qvgen", "--device", expected, repr(name))
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        fail("qvgen", "--device", expected, f"{name!r} (CUDA devices here: "
             f"{torch.cuda.device_count() if torch.cuda.is_available() else 0})")
    if device.type not in ("cpu", "cuda"):
        fail("qvgen", "--device", expected, repr(name))
    return device


__all__ = ["resolve_device"]
