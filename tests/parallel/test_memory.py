"""The README's memory estimate: per-GPU bytes from the models' own parameter counts."""

import pytest
import torch
from torch import nn

import qvgen
from qvgen.distributed.memory import GIB, estimate


def test_estimate_counts_student_teacher_and_gathered_block():
    def model():
        m = nn.Module()
        m.blocks = nn.ModuleList(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)) for _ in range(3))
        m.proj_out = nn.Linear(64, 8)
        return m

    with torch.device("meta"):
        teacher = model()
        student = qvgen.quantize_model(model(), qvgen.QuantConfig.preset("w4a4", rank=8), calibrate=False)
    ns = sum(p.numel() for p in student.parameters())
    nt = sum(p.numel() for p in teacher.parameters())
    assert ns > nt  # Phi, scales, zero points and clip logits are trained too
    one = estimate(student, teacher, 1, "ddp")
    assert one.total_gib * GIB == pytest.approx(16 * ns + 2 * nt)
    block = sum(p.numel() for p in student.blocks[0].parameters())
    eight = estimate(student, teacher, 8, "fsdp")
    assert eight.total_gib * GIB == pytest.approx((16 * ns + 2 * nt) / 8 + 4 * block)
