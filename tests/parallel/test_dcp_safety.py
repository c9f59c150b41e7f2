"""Sharded (torch.distributed.checkpoint) training checkpoints on CPU with gloo, 2 processes: nothing in the
folder runs code, damage is named, a crash between the publish renames loses nothing, another process count
is refused clearly, and a stalled rank ends the job within the collective timeout."""

from __future__ import annotations

import io
import json
import pickle
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path[:0] = [str(Path(__file__).parent)]

import dcp_workers as w  # noqa: E402
from gloo_workers import free_port, run_workers  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcp")
    run_workers(w.safety, str(root), timeout=120)
    per_rank = [json.loads((root / f"results-{r}.json").read_text()) for r in range(2)]
    return root, per_rank


def test_roundtrip_is_exact(results):
    _, per_rank = results
    assert all(r["roundtrip"] == "ok" and r["equal"] for r in per_rank)


def test_flipped_bit_is_named(results):
    _, per_rank = results
    for r in per_rank:
        assert r["flip"].startswith("ValueError") and "__0_0.distcp" in r["flip"] and "content hash" in r["flip"]


@pytest.mark.parametrize("case", ["evil", "evil-rehashed"])
def test_crafted_metadata_never_runs(results, case):
    _, per_rank = results
    for r in per_rank:
        assert r[case].startswith("ValueError") and ".metadata" in r[case]
        assert r["evil_ran"] == []
    assert "not a checkpoint metadata type" in per_rank[0]["evil-rehashed"]  # the unpickler refused it


def test_crash_between_publish_renames_keeps_the_checkpoint(results):
    _, per_rank = results
    for r in per_rank:
        assert r["found_after_crash"] == ".dcp-last.old-crash" and r["step"] == 4
        assert r["after_next_save"] == ["dcp-last"]  # recovered, replaced, leftovers cleaned


def test_other_process_count_is_refused(results):
    root, _ = results
    run_workers(w.other_world, str(root), world=1, timeout=60)
    text = (root / "world-1-0.txt").read_text()
    assert text.startswith("ValueError") and "2 processes" in text and "nproc_per_node 2" in text


def test_byte_items_never_unpickle_code(tmp_path):
    from qvgen.train.dcp_safe import SafePlanner

    class Item:  # what the planner reads: the destination's name
        dest_index = type("I", (), {"fqn": "optim.param_groups.0.lr"})()

    with pytest.raises(ValueError, match="optim.param_groups.0.lr"):
        SafePlanner().load_bytes(Item(), io.BytesIO(pickle.dumps(w.Evil(tmp_path / "pwned"))))
    assert not (tmp_path / "pwned").exists()


def test_stalled_rank_ends_with_an_error(tmp_path):
    ctx = mp.start_processes(w.stall_entry, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 60
    while not (tmp_path / "stall.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
    report = json.loads((tmp_path / "stall.json").read_text())
    assert report["outcome"] != "ok" and report["seconds"] < 20, report
