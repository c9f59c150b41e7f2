"""Files on disk: atomic folder swaps, content hashes and durable writes, safe paths and JSON reading.

The bottom of `qvgen`: imports nothing of it, only `qvgen_kernels.errors`.
"""
