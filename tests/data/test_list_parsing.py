"""CSV / JSONL lists of videos and prompts: captions keep their characters (U+2028, form feed, quoted
newlines), a UTF-8 BOM is accepted, non-UTF-8 bytes and non-string prompts are errors naming the file."""

from __future__ import annotations

import json

import pytest

from qvgen.data.sources import list_items


def _csv(tmp_path, text: str, encoding: str = "utf-8"):
    path = tmp_path / "list.csv"
    path.write_bytes(text.encode(encoding))
    return path


def test_csv_captions_keep_their_characters(tmp_path):
    path = _csv(tmp_path, 'video,caption\r\na.mp4,"one\u2028two"\r\nb.mp4,"x\x0cy"\r\nc.mp4,"line1\nline2"\r\n')
    items = list_items(path)
    assert [it.prompt for it in items] == ["one\u2028two", "x\x0cy", "line1\nline2"]
    assert [it.video.name for it in items] == ["a.mp4", "b.mp4", "c.mp4"]


def test_bom_is_accepted(tmp_path):
    items = list_items(_csv(tmp_path, "\ufeffvideo,prompt\na.mp4,hello\n"))
    assert items[0].prompt == "hello"


def test_non_utf8_is_named(tmp_path):
    path = _csv(tmp_path, "video,prompt\na.mp4,caf\u00e9\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"UTF-8.*list.csv:2"):
        list_items(path)


def test_jsonl_keeps_u2028_and_refuses_list_prompts(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps({"video": "a.mp4", "prompt": "one\u2028two"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    assert list_items(path)[0].prompt == "one\u2028two"
    path.write_text(json.dumps({"video": "a.mp4", "prompt": ["a", "red"]}) + "\n")
    with pytest.raises(ValueError, match=r"string.*list.jsonl:1"):
        list_items(path)
