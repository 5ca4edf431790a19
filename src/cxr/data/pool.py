"""Process pools for the per-image work of split (verification) and preprocess (decoding).

for result in imap_progress(fn, items, workers=0, desc="decode"):   # in order, with a tqdm bar
    ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from cxr.stage import progress_bar


def resolve_workers(workers: int) -> int:
    """``workers`` processes, 0 meaning every core this process may run on."""
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_MMAP_THRESHOLD = 64 * 1024


def release_large_buffers() -> bool:
    """Make glibc return every freed buffer of 64 KiB or more to the OS at once (a pool initializer).

    glibc raises its mmap threshold each time a large mmapped buffer is freed, so later buffers of
    that size come from the heap, which keeps its high-water mark. Decoding a progressive JPEG makes
    libjpeg allocate a full-resolution coefficient buffer (8 MiB for a 2,000 px X-ray) whatever the
    draft scale: with the dynamic threshold, each worker kept ~8 MiB more after the first such
    image. Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``, which also disables the dynamic
    adjustment) keeps a worker's memory at its baseline between images. Returns whether it was
    applied (False off glibc, where it is a no-op).
    """
    import ctypes
    import ctypes.util

    m_mmap_threshold = -3  # <malloc.h>
    try:  # an initializer that raises would break the pool, and this is only an optimisation
        name = ctypes.util.find_library("c")
        mallopt = ctypes.CDLL(name).mallopt if name else None  # musl, macOS, Windows: none
        return bool(mallopt and mallopt(ctypes.c_int(m_mmap_threshold), ctypes.c_int(_MMAP_THRESHOLD)))
    except Exception:
        return False


def imap_progress(
    fn: Callable,
    items: Sequence,
    workers: int = 0,
    desc: str = "",
    progress: bool = True,
    min_parallel: int = 64,
    chunksize: int = 8,
) -> Iterator:
    """``fn`` over ``items`` in order, on a process pool with a tqdm bar; yields results as they come.

    Few items run in-process: starting a pool costs more than it saves. ``chunksize`` items travel
    to a worker, and their results back, as one message. It is a constant, not a fraction of
    ``len(items)``: a worker holds a whole chunk of results, pickled, and so does the parent, so a
    chunk that grew with the data would make memory grow with it (64 decoded 256 px images are
    8 MiB per process). 8 items of a few ms each already amortise the messaging.
    """
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    n_workers = resolve_workers(workers)
    # concurrent.futures rather than multiprocessing.Pool: when a worker dies (killed for memory, or
    # SIGBUS on a memory-mapped write to a full disk) Pool waits forever; the executor raises.
    pool = (
        ProcessPoolExecutor(n_workers, initializer=release_large_buffers)
        if n_workers > 1 and len(items) >= min_parallel
        else None
    )
    bar = None
    try:
        if pool is None:
            results: Iterator[Any] = map(fn, items)
        else:
            results = pool.map(fn, items, chunksize=max(1, chunksize))
        # Created after map() has forked the workers: tqdm's monitor thread must not exist at a fork.
        bar = progress_bar(total=len(items), desc=desc, unit="img", enabled=progress)  # on a terminal only
        for result in results:
            yield result
            bar.update()
    except BrokenProcessPool as exc:
        raise RuntimeError(
            f"a {desc or 'worker'} process died before finishing its work ({exc}). The usual causes: the "
            f"machine ran out of memory (set fewer workers) or the disk filled up under a memory-mapped "
            f"write (free some space)."
        ) from None
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
