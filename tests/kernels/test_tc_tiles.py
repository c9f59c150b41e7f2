"""The per-token padding of the tensor-core GEMMs (csrc/include/qvgen/tc_tiles.h) on the CPU: the C++ check
csrc/tests/test_tc_tiles.cpp built with the host compiler and run, and the arithmetic restated here for the
M ranges that read past the old 256-row padding with the grouped sm_90a tile of 96."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TILES = {"sm80": 128, "sm80_grouped": 64, "sm90": 256, "sm90_grouped": 96}


def _header_constants() -> dict[str, int]:
    text = (ROOT / "csrc/include/qvgen/tc_tiles.h").read_text()
    names = {"sm80": "kTcSm80TileM", "sm80_grouped": "kTcSm80GroupedTileM", "sm90": "kTcSm90TileM",
             "sm90_grouped": "kTcSm90GroupedTileM"}
    out = {}
    for key, name in names.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(f"constexpr int {name} ="))
        out[key] = int(line.split("=")[1].split(";")[0])
    return out


def test_header_tiles_are_the_kernels() -> None:
    assert _header_constants() == TILES


@pytest.mark.parametrize("m", [193, 200, 256, 481, 500, 512, 32760])
def test_padding_covers_every_tile(m: int) -> None:
    align = math.lcm(*TILES.values())
    mp = -(-m // align) * align
    assert align == 768
    for tile in TILES.values():
        assert -(-m // tile) * tile <= mp
    assert -(-m // 96) * 96 > -(-m // 256) * 256 or m in (256, 512, 32760)  # the old padding fell short here


def test_cpp_padding_check(tmp_path) -> None:
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    exe = tmp_path / "test_tc_tiles"
    subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'csrc/include'}",
                    str(ROOT / "csrc/tests/test_tc_tiles.cpp"), "-o", str(exe)], check=True, timeout=120)
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout
    assert "padding 768, tiles 128 64 256 96, 0 failures" in r.stdout
