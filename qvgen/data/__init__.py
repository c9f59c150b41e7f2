"""Real data: video decoding, (video, prompt) lists, pipeline encoders, latent shards and their loader."""

from qvgen.data.loader import EpochSampler, shard_data_fn
from qvgen.data.shards import LatentShards, read_manifest

__all__ = ["EpochSampler", "LatentShards", "read_manifest", "shard_data_fn"]
