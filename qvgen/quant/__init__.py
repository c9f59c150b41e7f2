"""The method: quantizer config, weight and activation quantizers, timestep clip groups, the low-rank Φ,
the QAT layer (QLinear) and its deployed form (DeployedLinear), rank decay, and swapping them into a model.

Imports only `qvgen.distributed` (DTensor-aware helpers), `qvgen.storage` and `qvgen_kernels`.
"""
