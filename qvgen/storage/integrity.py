"""Checkpoint integrity: content hashes of tensors, durable writes, readable errors for damaged files.

Shared by ``qvgen.artifact.io`` (quantized models) and ``qvgen.train.checkpoint`` (training checkpoints). A hash
covers a tensor's dtype, shape and bytes, so a flipped bit in the data or in the safetensors header
(dtype, shape, offsets) is caught at load time and named.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from qvgen_kernels.errors import fail


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and (CPU, contiguous) bytes."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def digests(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    return {k: tensor_digest(v) for k, v in state.items()}


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical_json(value: Any) -> str:
    """One text per JSON value (sorted keys, no spaces, no NaN): what a hash of JSON content covers, so that
    pretty-printing or CRLF line ends leave it unchanged."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def json_digest(value: Any) -> str:
    """sha256 of a JSON value's content (``canonical_json``), not of any one text of it."""
    return text_digest(canonical_json(value))


def check_digests(op: str, file: Path, state: Mapping[str, torch.Tensor], recorded: Mapping[str, str]) -> None:
    """Every tensor of ``file`` has the hash recorded when it was written, and no tensor is missing or extra."""
    missing, extra = sorted(set(recorded) - set(state)), sorted(set(state) - set(recorded))
    if missing or extra:
        fail(op, str(file), f"the tensors recorded at save time ({len(recorded)})",
             f"missing {missing[:3]}, unexpected {extra[:3]}")
    for key, t in state.items():
        if tensor_digest(t) != recorded[key]:
            fail(op, str(file), f"tensor '{key}' with the content hash recorded at save time",
                 "different content (the file was modified or corrupted)")


def non_finite(tensors: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors holding NaN or Inf."""
    return [k for k, t in tensors
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_durably(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class HashingWriter:
    """A binary file wrapper for ``torch.save``: hashes what goes through, and keeps the first OSError of a
    write, since torch's zip writer replaces it by an ``unexpected pos`` message."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha, self.error = f, hashlib.sha256(), None

    def write(self, data: Any) -> int:
        try:
            n = self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise
        self.sha.update(data)
        return n

    def flush(self) -> None:
        self.f.flush()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_error(op: str, file: Path, error: BaseException, kept: str) -> OSError:
    """An OSError naming the file being written, the cause (errno kept: ENOSPC stays ENOSPC) and what was kept."""
    code = getattr(error, "errno", None)
    found = re.search(r"\(os error (\d+)\)", str(error))
    if code is None and found:
        code = int(found.group(1))  # safetensors' Rust writer reports it as text only
    reason = os.strerror(code) if code else str(error)
    return OSError(code or errno.EIO, f"{op}: could not write {file}: {reason} ({error}); {kept}")


def read_safetensors(op: str, file: Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a safetensors file, or a ValueError naming it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(file), device=device), metadata
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        fail(op, str(file), "a complete safetensors file", f"an unreadable one (truncated or corrupt: {e})")


__all__ = ["HashingWriter", "check_digests", "digests", "file_digest", "fsync_path", "non_finite",
           "canonical_json", "json_digest", "read_safetensors", "tensor_digest", "text_digest", "write_error", "write_text_durably"]
