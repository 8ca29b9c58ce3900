"""Freed memory kept in the process, so a training step or a Gram tile does not fault its
pages in afresh.

glibc's malloc serves a request of 128 KiB or more (a threshold it raises as it goes, up to
32 MiB) with a fresh mmap, and gives the top of its heap back to the kernel once more than
twice that is free there. A training step's temporaries of the data's size (a fast sketch's
n x d intermediates, a deep net's lower-layer activations under autograd) are then mapped,
faulted in page by page and unmapped again every step: on configs/wide_1m.yaml, tens of MB
of minor page faults a step and a sixth of the run's time in the kernel (issue 16). A Gram
tile's or a mat-vec's blocks of n x block temporaries are the same case: every process that
computes steps, tiles or mat-vecs keeps its freed memory (the train loop, the local Gram and
regression operators, the Gram and mat-vec actors).
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters, from glibc's malloc.h
_MMAP_AT = 32 << 20  # the most glibc accepts; larger blocks (rare, and big) still come by mmap
_TRIM_AT = 1 << 30


def keep_freed_memory() -> bool:
    """Under glibc: blocks below 32 MiB from the heap, and the heap given back only once 1 GiB
    is free at its top, so freed temporaries are reused rather than returned (the process keeps
    its high-water mark). True where applied; elsewhere (another libc) nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_AT)) & bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_AT))
