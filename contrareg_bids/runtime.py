"""Runtime helpers: the CPUs a process may use, and threads per process
(``--omp-nthreads``) for the libraries that run multi-threaded (devices: ``nn/device``,
which needs torch).

MultiProc runs several nodes at once; each node must then use at most the threads Nipype
reserved for it (the node's ``n_procs``), or the run oversubscribes the CPUs. The libraries
read their limits in different ways: ITK inside antspyx from
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` (read when ITK first starts in a process, so the
variable is also set before MultiProc starts its workers), SimpleITK and torch through calls
that act at once.
"""

from __future__ import annotations

import os
import sys

__all__ = ["MAX_DEFAULT_OMP_NTHREADS", "available_cpus", "default_omp_nthreads", "limit_threads"]

#: fMRIPrep's cap on the default threads per process: more rarely pays off for one node.
MAX_DEFAULT_OMP_NTHREADS = 8

#: Variables read by OpenMP/BLAS/ITK when they start in a process.
THREAD_VARIABLES = (
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)


def available_cpus() -> int:
    """CPUs this process may use (the affinity mask where the OS has one, e.g. in cgroups or
    a SLURM allocation), not the machine's count."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_omp_nthreads(nprocs: int) -> int:
    """fMRIPrep's default: one CPU left for the scheduler when there are several, at most 8."""
    nprocs = max(int(nprocs), 1)
    return max(min(nprocs - 1 if nprocs > 1 else 1, MAX_DEFAULT_OMP_NTHREADS), 1)


def limit_threads(n: int, *, torch: bool = False) -> int:
    """Make this process (and processes it starts) use at most ``n`` threads per library.

    Sets the environment variables of :data:`THREAD_VARIABLES`, SimpleITK's global default,
    and torch's intra-op threads when torch is imported already or ``torch`` is true (importing
    it only for this would cost a second in every N4 or ANTs node). Returns ``n``.
    """
    n = max(int(n), 1)
    for var in THREAD_VARIABLES:
        os.environ[var] = str(n)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    if torch:
        import torch as _torch  # noqa: F401 (imported to be configured below)
    module = sys.modules.get("torch")
    if module is not None and module.get_num_threads() != n:
        module.set_num_threads(n)
    return n
