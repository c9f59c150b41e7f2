"""Training batches from a shard folder: per-epoch reproducible shuffles, split by data-parallel rank.

Step s of a run with global batch G = batch_size * world takes positions [w*G, (w+1)*G) of epoch e's
permutation (e, w = divmod(s, N // G); the permutation is seeded by (seed, e)); rank r takes the r-th
batch_size of them. The batch is a pure function of the step, so a resumed run reads the same samples,
and N processes together read exactly what one process with batch G reads. The last N mod G samples of an
epoch's permutation are skipped (they are seen in other epochs).
"""

from __future__ import annotations

import torch

from qvgen_kernels.errors import fail

from qvgen.data.shards import LATENTS, TEXT, LatentShards, pad_text


class EpochSampler:
    """Sample indices of each step's global batch (see the module docstring)."""

    def __init__(self, num_samples: int, global_batch: int, seed: int) -> None:
        if num_samples < global_batch:
            fail("EpochSampler", "num_samples", f"at least the global batch ({global_batch})", num_samples)
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.steps_per_epoch = num_samples // global_batch
        self._epoch: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._epoch is None or self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch = (epoch, torch.randperm(self.num_samples, generator=g))
        return self._epoch[1]

    def global_indices(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        g = self.global_batch
        return self.permutation(epoch)[within * g:(within + 1) * g].tolist()

    def indices(self, step: int, rank: int, world: int) -> list[int]:
        per = self.global_batch // world
        return self.global_indices(step)[rank * per:(rank + 1) * per]


def shard_data_fn(shards: LatentShards, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                  text_len: int | None = None):
    """The trainer's data_fn(step, generator) -> (x0 [B, ...], cond) over `shards`; text embeddings are
    zero-padded to `text_len` (default: the manifest's max_sequence_length) and cond["null"] holds the
    empty prompt's embedding for caption dropout when the folder has one."""
    sampler = EpochSampler(len(shards), batch_size * world, seed)
    length = int(text_len or shards.manifest["max_sequence_length"])
    null = shards.null_text()

    def data_fn(step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        samples = [shards[i] for i in sampler.indices(step, rank, world)]
        x0 = torch.stack([s[LATENTS] for s in samples]).float()
        cond = {TEXT: pad_text([s[TEXT] for s in samples], length)}
        if null is not None:
            cond["null"] = {TEXT: pad_text([null] * len(samples), length)}
        return x0, cond

    data_fn.sampler = sampler
    data_fn.identity = shards.identity()  # a resume refuses another data set behind the same folder
    return data_fn


__all__ = ["EpochSampler", "shard_data_fn"]
