"""The self-contained ``qvgen demo``: sprite data, tiny FP teacher, sampler, metrics, report, pipeline.

Submodules are imported on use (``from qvgen.apps.demo.pipeline import run_demo``) so that importing the package
stays cheap.
"""

__all__ = ["metrics", "pipeline", "report", "sampling", "sprites", "teacher"]
