"""Latent/text shards on disk: the output of `qvgen precompute` and the training data it streams.

Layout of a shard folder:
    manifest.json          {"format", "complete", "kind", "layout", "latent_shape", "text_dim",
                            "max_sequence_length", "normalization", "settings", "pipeline", "shards":
                            [{"file", "samples", "sha256", "sources", "skipped"}], "null", "null_sha256"}
    shard-00000.safetensors  "{j}.latents" [*latent_shape] and "{j}.encoder_hidden_states" [L_j, D]
                             (unpadded) for the j-th sample of the shard
    null.safetensors       "encoder_hidden_states" of the empty prompt (caption dropout's null condition)

Every file is written to a temporary name and renamed, so an interrupted run leaves only whole shards.
Reading opens the safetensors files lazily (memory-mapped) and reads one sample's tensors at a time; each
file is checked once, when first opened, against the manifest: its sha256, its keys, and every tensor's
dtype and shape (fp32 latents of latent_shape, fp32 text [L <= max_sequence_length, text_dim]).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import torch

from qvgen_kernels.errors import fail

from qvgen.storage.integrity import file_digest
from qvgen.storage.paths import inside, read_json

MANIFEST, NULL_FILE, FORMAT = "manifest.json", "null.safetensors", 2  # 2: files hashed in the manifest
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
    manifest = read_json(path, "LatentShards")
    if manifest.get("format") != FORMAT:
        fail("LatentShards", str(path), f"manifest format {FORMAT} (shards with content hashes; rerun qvgen "
             "precompute into a new folder)", repr(manifest.get("format")))
    if not isinstance(manifest.get("shards"), list):
        fail("LatentShards", f"{path}: shards", "a JSON array", type(manifest.get("shards")).__name__)
    if complete and not manifest.get("complete"):
        fail("LatentShards", "root", "a finished precompute run (rerun qvgen precompute to complete it)",
             f"a partial one in {root}")
    return manifest


def _positive(manifest: dict, key: str, path: Path, minimum: int = 1) -> int:
    v = manifest.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        fail("LatentShards", f"{path}: {key}", f"an int >= {minimum}", repr(v))
    return v


def _check_layout(manifest: dict, path: Path) -> None:
    """The fields training relies on, before any shard is read."""
    shape = manifest.get("latent_shape")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                      for d in shape)):
        fail("LatentShards", f"{path}: latent_shape", "a list of positive ints", repr(shape))
    _positive(manifest, "text_dim", path)
    _positive(manifest, "max_sequence_length", path)
    for i, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            fail("LatentShards", f"{path}: shards[{i}]", "an object with file, samples and sha256", repr(entry))
        _positive(entry, "samples", path, minimum=0)


class LatentShards:
    """Random access to the samples of a shard folder, streamed from disk (a few shard files kept open)."""

    def __init__(self, root: str | Path, max_open: int = 8) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        _check_layout(self.manifest, self.root / MANIFEST)
        self.files = [inside(self.root, s["file"], f"{self.root / MANIFEST}: file") for s in self.manifest["shards"]]
        counts = [s["samples"] for s in self.manifest["shards"]]
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
            h = self._verified(k)
            while len(self._open) >= self.max_open:
                self._open.popitem(last=False)
        self._open[k] = h
        return h

    def _verified(self, k: int):
        """A handle on shard k after checking it against the manifest (hash, keys, dtypes, shapes)."""
        from safetensors import SafetensorError, safe_open

        file, entry, m = self.files[k], self.manifest["shards"][k], self.manifest
        if file_digest(file) != entry["sha256"]:
            fail("LatentShards", str(file), "the content hash recorded in the manifest", "different content "
                 "(the shard was modified, corrupted or replaced)")
        try:
            h = safe_open(str(file), framework="pt")
        except (SafetensorError, OSError) as e:
            fail("LatentShards", str(file), "a complete safetensors file", f"an unreadable one ({e})")
        want = {f"{j}.{key}" for j in range(entry["samples"]) for key in (LATENTS, TEXT)}
        if set(h.keys()) != want:
            fail("LatentShards", str(file), f"{entry['samples']} samples (the manifest's count)",
                 f"keys {sorted(h.keys())[:4]}")
        for j in range(entry["samples"]):
            lat, txt = h.get_slice(f"{j}.{LATENTS}"), h.get_slice(f"{j}.{TEXT}")
            shape = txt.get_shape()
            if lat.get_dtype() != "F32" or list(lat.get_shape()) != m["latent_shape"]:
                fail("LatentShards", f"{file}: sample {j} latents", f"F32 {m['latent_shape']} (the manifest's)",
                     f"{lat.get_dtype()} {lat.get_shape()}")
            if txt.get_dtype() != "F32" or len(shape) != 2 or shape[1] != m["text_dim"] or not (
                    1 <= shape[0] <= m["max_sequence_length"]):
                fail("LatentShards", f"{file}: sample {j} text", f"F32 [1..{m['max_sequence_length']}, "
                     f"{m['text_dim']}]", f"{txt.get_dtype()} {shape}")
        return h

    def identity(self) -> str:
        """What identifies this data set: the hash of its manifest's content (a resume checks it)."""
        from qvgen.storage.integrity import json_digest

        return json_digest(self.manifest)

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
        from qvgen.storage.integrity import read_safetensors

        if file_digest(path) != self.manifest.get("null_sha256"):
            fail("LatentShards", str(path), "the content hash recorded in the manifest", "different content")
        tensors, _ = read_safetensors("LatentShards", path)
        t = tensors.get(TEXT)
        if t is None or t.dtype != torch.float32 or t.dim() != 2 or t.shape[1] != self.manifest["text_dim"]:
            fail("LatentShards", str(path), f"an fp32 [L, {self.manifest['text_dim']}] '{TEXT}'",
                 None if t is None else f"{t.dtype} {list(t.shape)}")
        return t


def pad_text(texts: list[torch.Tensor], length: int) -> torch.Tensor:
    """Zero-pad (or cut) each [L_i, D] embedding to [length, D] and stack: [B, length, D]."""
    out = texts[0].new_zeros(len(texts), length, texts[0].shape[-1])
    for b, t in enumerate(texts):
        n = min(length, t.shape[0])
        out[b, :n] = t[:n]
    return out


__all__ = ["LATENTS", "LatentShards", "MANIFEST", "TEXT", "pad_text", "read_manifest", "shard_name",
           "write_manifest", "write_shard", "write_tensors"]
