"""The method: quantizer config, weight and activation quantizers, timestep clip groups, the low-rank Φ,
the QAT layer (QLinear) and its deployed form (DeployedLinear), rank decay, swapping them into a model, and fusing
the activation after a deployed projection into its call (fuse).

Imports only `qvgen.distributed` (DTensor-aware helpers), `qvgen.storage` and `qvgen_kernels`.
"""
