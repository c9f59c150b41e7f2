"""The (video, prompt) pairs of a precompute run: a folder of videos (prompt from a same-named .txt next to
each video, else empty), or a CSV / JSONL list with a video column and a prompt column (paths relative to
the list's folder). Column names follow common datasets: video|path|file|video_path, prompt|caption|text."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from qvgen_kernels.errors import fail

OP = "qvgen precompute"
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif")
VIDEO_KEYS = ("video", "path", "file", "video_path")
PROMPT_KEYS = ("prompt", "caption", "text")


@dataclass(frozen=True)
class Item:
    video: Path
    prompt: str


def _from_folder(root: Path) -> list[Item]:
    items = []
    for video in sorted(p for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()):
        caption = video.with_suffix(".txt")
        items.append(Item(video, caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""))
    return items


def _pick(row: dict, keys: tuple[str, ...], path: Path, line: int, what: str) -> str:
    for k in keys:
        if k in row and row[k] is not None:
            if not isinstance(row[k], str):  # a JSON list or number is not a caption / a path
                fail(OP, "--list", f"a string in the {what} column '{k}'", f"{path}:{line} "
                     f"({type(row[k]).__name__} {row[k]!r:.60})")
            return row[k]
    fail(OP, "--list", f"a {what} column ({' or '.join(keys)}) in every row", f"{path}:{line} with {sorted(row)}")


def _text(path: Path) -> str:
    """The list's text: UTF-8, a byte-order mark allowed; anything else is an error naming the file."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        fail(OP, "--list", "a UTF-8 text file", f"{path}:{line} (byte {e.start}: {e.reason})")


def _rows(path: Path) -> list[tuple[int, dict]]:
    text = _text(path)
    if path.suffix.lower() == ".csv":
        # The csv module splits records itself: quoted fields keep their newlines, and characters that
        # str.splitlines() would break at (U+2028, form feed) stay inside their caption.
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            return [(reader.line_num, row) for row in reader]
        except csv.Error as e:
            fail(OP, "--list", "a valid CSV file", f"{path}:{reader.line_num} ({e})")
    rows = []
    for i, line in enumerate(text.split("\n"), 1):  # JSON Lines: records end at \n only
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                fail(OP, "--list", "one JSON object per line", f"{path}:{i} ({e.msg})")
            if not isinstance(row, dict):
                fail(OP, "--list", "one JSON object per line", f"{path}:{i} ({type(row).__name__})")
            rows.append((i, row))
    return rows


def list_items(path: str | Path) -> list[Item]:
    """The pairs of a folder, a .csv or a .jsonl file, in a fixed order (the shard layout depends on it)."""
    path = Path(path)
    if path.is_dir():
        items = _from_folder(path)
    elif path.is_file() and path.suffix.lower() in (".csv", ".jsonl"):
        items = [Item(path.parent / _pick(row, VIDEO_KEYS, path, line, "video"),
                      _pick(row, PROMPT_KEYS, path, line, "prompt").strip()) for line, row in _rows(path)]
    else:
        fail(OP, "--videos/--list", "a folder of videos, a .csv or a .jsonl file", str(path))
    if not items:
        fail(OP, "--videos/--list", f"at least one video ({', '.join(VIDEO_SUFFIXES)})", f"none in {path}")
    return items


__all__ = ["Item", "list_items"]
