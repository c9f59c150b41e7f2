"""Clear errors for a pipeline folder whose model_index.json names a class that does not fit the component,
and a WARNING (not INFO) when an nn.MultiheadAttention out_proj is left unquantized."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
from torch import nn

import qvgen
from qvgen.data.precompute import load_pipeline_parts

sys.path.insert(0, str(Path(__file__).parent))
from tiny_pipeline import tiny  # noqa: E402,F401  (the fixture)


def test_swapped_model_index_class_is_named(tiny, tmp_path):
    pipe = shutil.copytree(tiny["wan"], tmp_path / "wan")
    index = json.loads((pipe / "model_index.json").read_text())
    index["vae"] = ["diffusers", "WanTransformer3DModel"]
    (pipe / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="'vae' loadable as the WanTransformer3DModel"):
        load_pipeline_parts(pipe)


def test_mha_out_proj_skip_is_a_warning(caplog):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2)
            self.ff = nn.Linear(16, 16)

    with caplog.at_level(logging.INFO, logger="qvgen"):
        qvgen.quantize_model(Block(), qvgen.QuantConfig.preset("w4a4", rank=0))
    skips = [r for r in caplog.records if "out_proj" in r.getMessage()]
    assert skips and all(r.levelno == logging.WARNING for r in skips)
