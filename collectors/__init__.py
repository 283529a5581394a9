"""qcow2-monitor core: read-only qcow2 analysis."""

import os

# numpy serves the array passes only, never linear algebra: the thread pool OpenBLAS starts
# when numpy is imported would only cost CPU (about 0.1 s per process on 2 cores, measured
# with bench/bench_check.py). An operator's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
