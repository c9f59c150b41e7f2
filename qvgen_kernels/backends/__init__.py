"""The backends of the op registry; importing this package registers all of them (cheaply: the
compiled extension and Triton are loaded on first use). One module per backend; see
``docs/extending.md`` to add one."""

from . import cpu_int8, ext, reference, triton  # noqa: F401  (registration side effects; cpu_int8 before ext)

__all__: list[str] = []
