"""How the C allocator keeps freed memory, on glibc (Linux).

PyTorch's CPU tensors come from ``malloc``. glibc hands the free top of its heap back to the kernel as
soon as it exceeds ``M_TRIM_THRESHOLD`` (by default twice the largest block freed so far, at most 64 MiB),
and serves blocks above ``M_MMAP_THRESHOLD`` with fresh ``mmap`` pages. A pass of the importance-weighted
bound allocates and frees tens of megabytes per chunk of samples, so with those defaults every chunk faults
its pages in again, 4 KiB and one zeroing at a time: for ``lvae_mnist`` at K = 5000, ~6,000 page faults a
chunk, and a compiled bound 15-25% slower than with its freed memory kept (benchmarks/RESULTS.md).

:func:`retain_freed_memory` raises both thresholds, so freed memory stays in the process for the next
chunk (up to ``trim_bytes`` of it at the top of the heap), as jemalloc and tcmalloc do by design.
:meth:`hvae.HierarchicalVAE.log_likelihood` calls it on its first CPU call; set ``HVAE_MALLOC_TUNING=0``
to keep glibc's defaults. Elsewhere (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)
_done = False


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def retain_freed_memory(trim_bytes: int = 256 << 20, mmap_bytes: int = MMAP_THRESHOLD_MAX) -> bool:
    """Keep up to ``trim_bytes`` of freed heap in the process, and serve blocks under ``mmap_bytes``
    from the heap. Process-wide, for the rest of the process. Returns whether the settings took effect
    (False off glibc, or where glibc refused a value)."""
    if trim_bytes < 0 or not 0 < mmap_bytes <= MMAP_THRESHOLD_MAX:
        raise ValueError(
            f"need trim_bytes >= 0 and 0 < mmap_bytes <= {MMAP_THRESHOLD_MAX}, got {trim_bytes}, {mmap_bytes}"
        )
    libc = _glibc()
    if libc is None:
        return False
    # mmap threshold first: setting either one ends glibc's dynamic adjustment of both
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_bytes))


def tune_once() -> None:
    """:func:`retain_freed_memory` with its defaults, once per process, unless ``HVAE_MALLOC_TUNING=0``."""
    global _done
    if _done:
        return
    _done = True
    if os.environ.get("HVAE_MALLOC_TUNING", "1").strip().lower() not in ("0", "off", "false", "no"):
        retain_freed_memory()
