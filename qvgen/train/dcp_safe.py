"""Reading torch.distributed.checkpoint folders without running code from them.

torch's ``FileSystemReader.read_metadata`` unpickles ``.metadata`` with the full unpickler, and
``DefaultLoadPlanner.load_bytes`` reads non-tensor items (optimizer hyper-parameters) with
``torch.load(weights_only=False)``: a crafted file would run arbitrary code. Here ``.metadata`` goes through
an unpickler that builds only DCP's own metadata records (plus torch.Size, dtypes and paths), and byte items
through ``torch.load(weights_only=True)``. Anything else is a ValueError naming the file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader

from qvgen_kernels.errors import fail

_DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "BytesStorageMetadata", "ChunkStorageMetadata", "Metadata", "MetadataIndex", "StorageMeta",
        "TensorProperties", "TensorStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a torch.layout from its name
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _DCP_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"'{module}.{name}' is not a checkpoint metadata type")


def read_metadata(path: Path):
    """The DCP ``Metadata`` stored in ``path`` (a ``.metadata`` file), built from allow-listed types only."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except Exception as e:  # noqa: BLE001 - any failure of a damaged or crafted file is the same error
        fail("load_sharded", str(path), "DCP metadata made of checkpoint records only",
             f"an unreadable or unsafe file ({type(e).__name__}: {e})")
    if not isinstance(metadata, Metadata):
        fail("load_sharded", str(path), "a DCP Metadata record", type(metadata).__name__)
    return metadata


class SafeReader(FileSystemReader):
    """``FileSystemReader`` whose metadata comes from the allow-listed unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        from torch.distributed.checkpoint.metadata import StorageMeta

        rank = kwargs.get("rank")
        metadata = read_metadata(Path(self._get_metadata_path(rank)))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """``DefaultLoadPlanner`` whose byte items are read with ``weights_only=True``; the value is then
    handed to torch's own code re-serialised, so only bytes written here ever meet its full unpickler."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as e:  # noqa: BLE001
            fail("load_sharded", read_item.dest_index.fqn, "a plain value (numbers, strings, tensors)",
                 f"an unsafe or damaged item ({type(e).__name__}: {e})")
        clean = io.BytesIO()
        torch.save(obj, clean)
        clean.seek(0)
        super().load_bytes(read_item, clean)


def storage_files(metadata) -> set[str]:
    """The data files the metadata points into (relative paths)."""
    return {str(info.relative_path) for info in (metadata.storage_data or {}).values()}


__all__ = ["SafePlanner", "SafeReader", "read_metadata", "storage_files"]
