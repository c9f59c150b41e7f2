"""torchrun-style training on CPU (gloo, 2 processes): the FSDP2 and DDP runs of `qvgen train` on shards end
with the same model as one process on the same global batch, and FSDP2 / DDP runs resumed from their
torch.distributed.checkpoint checkpoints end bit-identical to uninterrupted ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "data")]

import tiny_pipeline as tp  # noqa: E402
import train_workers as w  # noqa: E402
from gloo_workers import run_workers  # noqa: E402

PRE = ["--frames", "9", "--height", "32", "--width", "32", "--fps", "8", "--shard-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from qvgen.apps.cli import main

    root = tmp_path_factory.mktemp("par")
    tp.make_clips(root / "clips", 4)
    tp.make_pipeline(root / "wan", "wan")
    dit = tp.make_wan_transformer(root / "dit")
    main(["precompute", "--pipeline", str(root / "wan"), "--videos", str(root / "clips"), "--out",
          str(root / "shards"), *PRE])
    return str(dit), str(root / "shards"), root


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "quantized" / "model.safetensors"))


def test_fsdp_and_ddp_match_one_process_and_resume_exactly(setup):
    from qvgen.apps.cli import main

    dit, shards, root = setup
    run_workers(w.worker, dit, shards, str(root), timeout=150)
    main(w.cli_args(dit, shards, root / "single", 2))  # one process, the same global batch of 2
    ref = _tensors(root / "single")
    for mode in ("fsdp", "ddp"):
        got = _tensors(root / mode)
        assert sorted(got) == sorted(ref)
        for k, v in ref.items():
            if v.is_floating_point():
                # Gradients are averaged over the 2 ranks by all-reduce / reduce-scatter: the fp32 sums run in
                # another order than one process's batch mean, so 4 AdamW steps agree to ~1e-7 (measured
                # 3.6e-7), not bit for bit; 1e-5 leaves room across BLAS builds.
                torch.testing.assert_close(got[k], v, rtol=0, atol=1e-5, msg=f"{mode}: {k}")
            else:  # packed codes: no weight of this run lies within 1e-5 of a rounding boundary
                assert torch.equal(got[k], v), f"{mode}: {k}"
    import qvgen
    from qvgen.models.loading import load_diffusers_model

    for mode, state in torch.load(root / "resumed.pt", weights_only=True).items():
        model = qvgen.quantize_model(load_diffusers_model(dit), qvgen.QuantConfig.preset("w4a4", rank=2),
                                     calibrate=False)
        model.load_state_dict(state)  # FSDP2: Phi masked (rank 0), dropped by to_deploy; DDP: already gone
        resumed, full = qvgen.to_deploy(model).state_dict(), _tensors(root / mode)
        assert sorted(resumed) == sorted(full)
        assert all(torch.equal(resumed[k], full[k]) for k in full), mode  # bit for bit
    assert (root / "fsdp" / "train" / "metrics.jsonl").is_file()  # rank 0 only writes logs
