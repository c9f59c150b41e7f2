"""Per-GPU memory of QVGen QAT from a model's own parameter counts (activations excluded: they depend on the
token count, the batch and gradient checkpointing).

Student (trainable, fp32 masters): weights 4 B + gradients 4 B + AdamW moments 8 B = 16 B per parameter,
counting everything quantize_model adds (Phi at its full rank, weight-quantizer scale/zero, clip logits).
Teacher (frozen): 2 B (bf16) or 4 B per parameter. FSDP2 divides both by the number of GPUs N and adds the
largest transformer block gathered for compute (bf16) twice (one in use, one prefetched); DDP keeps a
full replica on every GPU plus fp32 gradient buckets (~4 B per trainable parameter).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

GIB = 1024 ** 3


@dataclass(frozen=True)
class MemoryEstimate:
    student_params: int
    teacher_params: int
    largest_block: int
    gpus: int
    parallel: str
    student_gib: float
    teacher_gib: float
    gathered_gib: float

    @property
    def total_gib(self) -> float:
        return self.student_gib + self.teacher_gib + self.gathered_gib


def _largest_block(model: nn.Module) -> int:
    from qvgen.distributed.parallel import shard_units

    return max((sum(p.numel() for p in u.parameters()) for u in shard_units(model)), default=0)


def estimate(student: nn.Module, teacher: nn.Module, gpus: int, parallel: str = "fsdp",
             teacher_bytes: int = 2) -> MemoryEstimate:
    """Memory per GPU for N = gpus (models may live on the meta device)."""
    ns = sum(p.numel() for p in student.parameters())
    nt = sum(p.numel() for p in teacher.parameters())
    block = _largest_block(student)
    if parallel == "fsdp":
        s, t, g = 16 * ns / gpus, teacher_bytes * nt / gpus, 2 * 2 * block
    else:  # ddp (or one GPU): full replicas, plus the gradient buckets when replicated
        s, t, g = 16 * ns + (4 * ns if gpus > 1 else 0), teacher_bytes * nt, 0
    return MemoryEstimate(ns, nt, block, gpus, parallel, s / GIB, t / GIB, g / GIB)


__all__ = ["MemoryEstimate", "estimate"]
