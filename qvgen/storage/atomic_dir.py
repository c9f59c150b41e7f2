"""Replace a folder by a fully written sibling so that a complete copy exists at every instant.

A new copy is written into ``.<name>.tmp-*`` beside ``path`` and fsynced; then one atomic exchange
(Linux ``renameat2(RENAME_EXCHANGE)``) swaps it with the folder at ``path``. Where the exchange is not
supported (other systems, some network file systems) two renames are used: the old folder moves to
``.<name>.old-*``, the new one to ``path``; a reader that comes between them finds ``path`` missing and
takes the newest complete sibling instead (``resolve``). Leftovers of killed writers are removed by the
next successful publish.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from qvgen.storage.integrity import fsync_path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_RENAMEAT2 = _renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False when the system or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: fall back to two renames
        return False
    raise OSError(code, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(code)}")


def _siblings(path: Path, kinds: tuple[str, ...] = ("tmp", "old")) -> list[Path]:
    if not path.parent.is_dir():
        return []
    prefixes = tuple(f".{path.name}.{k}-" for k in kinds)
    return [path.parent / n for n in os.listdir(path.parent) if n.startswith(prefixes)]


def new_tmp(path: Path) -> Path:
    """A fresh empty folder beside ``path`` to write the next copy into, with the permissions the umask gives
    (tempfile.mkdtemp makes it 0700, and the folder becomes ``path``: teammates could not read a saved model)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()  # mode 0777 minus the umask, as os.makedirs and diffusers' folders
            return tmp
        except FileExistsError:
            continue


def publish(tmp: Path, path: Path) -> None:
    """Make the complete, fsynced folder ``tmp`` the folder at ``path``; then clean leftovers."""
    if not path.exists():
        os.rename(tmp, path)
        old = None
    elif exchange(tmp, path):
        old = tmp  # now holds the previous copy
    else:
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
        os.rename(path, old)
        os.rename(tmp, path)
    fsync_path(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    clean(path)


def clean(path: Path) -> None:
    """Remove the ``.tmp-*`` / ``.old-*`` siblings that killed writers left (only call with ``path`` complete)."""
    for stale in _siblings(path):
        shutil.rmtree(stale, ignore_errors=True)


def resolve(path: Path, complete: Callable[[Path], bool]) -> Path | None:
    """``path`` when it is complete, else the newest complete sibling left by an interrupted publish."""
    if complete(path):
        return path
    found = [p for p in _siblings(path) if complete(p)]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


__all__ = ["clean", "exchange", "new_tmp", "publish", "resolve"]
