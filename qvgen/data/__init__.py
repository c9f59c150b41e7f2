"""Real data: video decoding, (video, prompt) lists, pipeline encoders, latent shards and their loader."""

from .loader import EpochSampler, shard_data_fn
from .shards import LatentShards, read_manifest

__all__ = ["EpochSampler", "LatentShards", "read_manifest", "shard_data_fn"]
