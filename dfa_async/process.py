"""Settings of the whole process, made once by the process that runs stages or workers (a Ray actor, the
driver of the local backend, the bench), never by a library object: torch's thread count and glibc's
handling of freed memory."""
from __future__ import annotations

from contextlib import contextmanager

import torch


def setup(threads: int) -> None:
    """What a process that computes stages sets for itself, before building them."""
    keep_freed_memory()
    torch.set_num_threads(threads)


@contextmanager
def threads(n: int):
    """torch's thread count set to n for a measurement, and put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory instead of returning large blocks to the OS. A training step
    frees and reallocates the same large tensors (gradients, activations); without this every step
    pays for fresh zeroed pages from the kernel (measured: ~13% of a 4096-wide block's step on the
    CPU, more when two processes share the memory bus). No-op where glibc is absent."""
    global _memory_kept
    if _memory_kept:
        return
    _memory_kept = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)          # M_MMAP_THRESHOLD: serve blocks < 1 GiB from the heap
        libc.mallopt(-1, (1 << 31) - 1)    # M_TRIM_THRESHOLD: do not give the heap's top back
    except (OSError, AttributeError):
        pass


_memory_kept = False
