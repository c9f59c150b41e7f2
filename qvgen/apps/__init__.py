"""Applications: the `qvgen` command line, `generate` (pipelines with a quantized transformer) and the
self-contained demo. The top layer: everything else is imported from here, nothing imports it.
"""
