"""The ``num_threads`` input shared by the multi-threaded nodes (``--omp-nthreads``)."""

from __future__ import annotations

from nipype.interfaces.base import BaseInterfaceInputSpec, traits


class ThreadedInputSpec(BaseInterfaceInputSpec):
    """Inputs of a node whose libraries run threads: give it the node's ``n_procs`` so that
    MultiProc's bookkeeping and the real thread count agree. Not hashed: changing it does
    not rerun a finished node."""

    num_threads = traits.Int(
        1, usedefault=True, nohash=True, desc="threads for ITK/SimpleITK/torch in this node"
    )


def use_threads(inputs, *, torch: bool = False) -> None:
    """Apply ``inputs.num_threads`` to this process before the node's work starts."""
    from ..runtime import limit_threads

    limit_threads(inputs.num_threads, torch=torch)
