"""Real crashes: SIGKILL during training and during save_quantized, and a file-size limit during saves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DRIVER = Path(__file__).with_name("crash_driver.py")
KILLS = 8


def test_kill9_and_file_size_limit(tmp_path):
    out = tmp_path / "crash"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, str(DRIVER), str(out), str(KILLS), "0"], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "result.json").read_text())

    fsize = result["fsize"]
    assert all(c["outcome"] in ("clear", "saved") for c in fsize), fsize
    assert sum(c["outcome"] == "clear" for c in fsize) >= 8 and not any(c["leftovers"] for c in fsize)

    train = result["train"]
    assert train["kills"] == KILLS and train["exact"] is True  # torch.equal with the uninterrupted run
    assert any(train["checkpoints_loaded_after_kills"])

    save = result["save"]
    assert all(len(r["matches"]) == 1 for r in save["after_kill"])  # exactly the old or the new model
    # A killed save leaves its folder until the next save starts: they never pile up.
    assert all(r["leftovers"] <= 1 for r in save["after_kill"]) and save["after_kill"][-1]["leftovers"] == 0, save
    print("crash driver:", json.dumps({"fsize": [c["outcome"] for c in fsize], "train_kills": train["kills"],
                                       "save_kills": save["kills"], "seconds": result["seconds"]}))
