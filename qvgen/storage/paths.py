"""Reading paths and JSON that come from files: confined to their folder, damaged files named."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from qvgen_kernels.errors import fail


def inside(root: Path, entry: Any, what: str) -> Path:
    """``root / entry`` for a relative path from a config that stays in ``root`` (no absolute path, no '..').
    Checked lexically: a symlink inside the folder (a Hugging Face cache snapshot) is the folder's business."""
    parts = PurePosixPath(entry).parts if isinstance(entry, str) and entry else ()
    if not parts or PurePosixPath(entry).is_absolute() or ".." in parts or "\\" in entry:
        fail("qvgen", what, f"a relative file name inside {root}", repr(entry))
    return root.joinpath(*parts)


def read_json(path: Path, op: str) -> dict:
    """A JSON object from ``path``, or a ValueError naming the file."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(op, str(path), "a readable JSON file", f"a damaged one ({e})")
    if not isinstance(value, dict):
        fail(op, str(path), "a JSON object", type(value).__name__)
    return value


__all__ = ["inside", "read_json"]
