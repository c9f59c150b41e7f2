"""Running on devices and many processes: device choice, FSDP2 / DDP wrapping, DTensor-aware tensor helpers,
and memory accounting.

Below the method (QLinear reads sharded parameters through `sharding`); imports nothing above it.
"""
