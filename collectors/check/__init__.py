"""The full check (`qemu-img check` figures and located findings), measure's data runs and the
table dumps: the array passes, and the only room of the core that imports numpy."""

import os

_BLAS_THREADS = "OPENBLAS_NUM_THREADS"


def _import_numpy() -> None:
    """Import numpy with one OpenBLAS thread, leaving the process environment as it was.

    numpy serves the array passes only, never linear algebra: the thread pool OpenBLAS starts
    when numpy is imported would only cost CPU (about 0.1 s per process on 2 cores, measured
    with bench/bench_check.py). OpenBLAS reads the variable once, when it is loaded; an
    operator's own setting wins.
    """
    preset = _BLAS_THREADS in os.environ
    os.environ.setdefault(_BLAS_THREADS, "1")
    try:
        import numpy  # noqa: F401
    finally:
        if not preset:
            del os.environ[_BLAS_THREADS]


_import_numpy()
