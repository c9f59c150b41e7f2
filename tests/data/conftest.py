"""Fixtures of the data tests: tiny pipelines and clips built once per session (no downloads)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_pipeline as tp  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {"clips": root / "clips", "paths": tp.make_clips(root / "clips", 5), "wan": tp.make_pipeline(root / "wan", "wan"),
            "cogvideox": tp.make_pipeline(root / "cog", "cogvideox"), "dit": tp.make_wan_transformer(root / "dit"),
            "root": root}
