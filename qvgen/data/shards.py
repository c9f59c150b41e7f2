"""Latent/text shards on disk: the output of `qvgen precompute` and the training data it streams.

Layout of a shard folder:
    manifest.json          {"format", "complete", "kind", "layout", "latent_shape", "text_dim",
                            "max_sequence_length", "normalization", "settings", "shards": [{"file",
                            "samples", "sources"}], "null"}
    shard-00000.safetensors  "{j}.latents" [*latent_shape] and "{j}.encoder_hidden_states" [L_j, D]
                             (unpadded) for the j-th sample of the shard
    null.safetensors       "encoder_hidden_states" of the empty prompt (caption dropout's null condition)

Every file is written to a temporary name and renamed, so an interrupted run leaves only whole shards.
Reading opens the safetensors files lazily (memory-mapped) and reads one sample's tensors at a time.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import torch

from qvgen_kernels.errors import fail

MANIFEST, NULL_FILE, FORMAT = "manifest.json", "null.safetensors", 1
LATENTS, TEXT = "latents", "encoder_hidden_states"


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_shard(path: Path, samples: list[dict[str, torch.Tensor]]) -> None:
    from safetensors.torch import save_file

    tensors = {f"{j}.{k}": v.detach().cpu().contiguous() for j, s in enumerate(samples) for k, v in s.items()}
    _atomic(path, lambda tmp: save_file(tensors, str(tmp)))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    _atomic(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp)))


def write_manifest(root: Path, manifest: dict) -> None:
    _atomic(root / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))


def read_manifest(root: str | Path, complete: bool = True) -> dict | None:
    """The manifest of `root` (None when absent and not `complete`); with `complete`, refuses a partial run."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        if complete:
            fail("LatentShards", "root", f"a folder written by qvgen precompute (with {MANIFEST})", str(root))
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        fail("LatentShards", "root", f"a valid {MANIFEST}", f"{path} ({e.msg})")
    if manifest.get("format") != FORMAT:
        fail("LatentShards", "root", f"manifest format {FORMAT}", f"{manifest.get('format')!r} in {path}")
    if complete and not manifest.get("complete"):
        fail("LatentShards", "root", "a finished precompute run (rerun qvgen precompute to complete it)",
             f"a partial one in {root}")
    return manifest


class LatentShards:
    """Random access to the samples of a shard folder, streamed from disk (a few shard files kept open)."""

    def __init__(self, root: str | Path, max_open: int = 8) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.files = [self.root / s["file"] for s in self.manifest["shards"]]
        counts = [int(s["samples"]) for s in self.manifest["shards"]]
        self.starts = torch.tensor([0] + counts).cumsum(0).tolist()
        self.max_open = max_open
        self._open: OrderedDict[int, object] = OrderedDict()

    def __len__(self) -> int:
        return self.starts[-1]

    def _handle(self, k: int):
        from safetensors import safe_open

        h = self._open.pop(k, None)
        if h is None:
            if not self.files[k].is_file():
                fail("LatentShards", "root", "every shard listed in the manifest", f"missing {self.files[k]}")
            h = safe_open(str(self.files[k]), framework="pt")
            while len(self._open) >= self.max_open:
                self._open.popitem(last=False)
        self._open[k] = h
        return h

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            fail("LatentShards", "index", f"an int in [0, {len(self)})", i, IndexError)
        import bisect

        k = bisect.bisect_right(self.starts, i) - 1
        j, h = i - self.starts[k], self._handle(k)
        return {key: h.get_tensor(f"{j}.{key}") for key in (LATENTS, TEXT)}

    def null_text(self) -> torch.Tensor | None:
        """The empty prompt's embedding [L, D], when the folder has one."""
        path = self.root / NULL_FILE
        if not self.manifest.get("null") or not path.is_file():
            return None
        from safetensors.torch import load_file

        return load_file(str(path))[TEXT]


def pad_text(texts: list[torch.Tensor], length: int) -> torch.Tensor:
    """Zero-pad (or cut) each [L_i, D] embedding to [length, D] and stack: [B, length, D]."""
    out = texts[0].new_zeros(len(texts), length, texts[0].shape[-1])
    for b, t in enumerate(texts):
        n = min(length, t.shape[0])
        out[b, :n] = t[:n]
    return out


__all__ = ["LATENTS", "LatentShards", "MANIFEST", "TEXT", "pad_text", "read_manifest", "shard_name",
           "write_manifest", "write_shard", "write_tensors"]
