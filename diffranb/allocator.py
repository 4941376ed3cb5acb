"""How the C allocator hands out the large temporary arrays of per-frame work.

Sorting one frame allocates and frees a few dozen arrays of one to a few MiB (a 512² frame in float32 is
1 MiB, its int64 indices 2 MiB). glibc serves a block above its *mmap threshold* (128 KiB at start, raised
only when such a block is freed) with fresh pages from the kernel, and returns freed memory above its *trim
threshold* at the top of the heap. Either way the next frame's arrays land on new pages, and the kernel must
zero every page on first touch: measured here, 2,200 page faults and about half of the 8 ms that the spot
statistics of one 512² frame took, in any process that had not happened to free a large block first (every
process pool worker, every long-running kernel). Which processes were slow depended on their history.

:func:`configure` fixes both thresholds, so that blocks up to :data:`MMAP_THRESHOLD_MIB` are reused from the
heap and up to :data:`TRIM_THRESHOLD_MIB` of freed heap stays with the process. Larger blocks (a whole data
set's frames, a network's biggest activations) are still mapped and unmapped as before, so memory held
after a big array is freed grows by at most the trim threshold. ``import diffranb`` calls it once.

Set ``DIFFRANB_MALLOC=glibc`` to keep glibc's own behaviour (``diffranb bench malloc`` compares the two in
one run). It does nothing where the C library is not glibc, or where the process was started with glibc's
own ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` set: those are the user's choice.

Reference: the GNU C Library manual, "Memory Allocation Tunables", and mallopt(3).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import warnings

#: Blocks up to this size come from the heap and are reused (glibc's ceiling for it on 64-bit systems).
MMAP_THRESHOLD_MIB = 32
#: Freed memory at the top of the heap is kept up to this size before it is returned to the kernel.
TRIM_THRESHOLD_MIB = 64
#: mallopt(3) parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: The environment variable that turns :func:`configure` off (value ``glibc``).
ENV = "DIFFRANB_MALLOC"

_state = {"configured": None}


def _glibc():
    """glibc's ``mallopt``, or None where the C library is another (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


def configure() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (see the module's text); True if they were set.

    Idempotent. Nothing is changed, and False returned, when ``DIFFRANB_MALLOC=glibc`` (any other value
    warns and counts as that), when glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
    variables are set, or off glibc.
    """
    if _state["configured"] is not None:
        return _state["configured"]
    setting = os.environ.get(ENV, "")
    if setting not in ("", "glibc"):  # called on import: say so, and change nothing
        warnings.warn(f"{ENV}={setting!r} is not understood (only 'glibc', for glibc's own behaviour); "
                      "glibc's thresholds are left as they are", RuntimeWarning, stacklevel=2)
        setting = "glibc"
    done = False
    if setting != "glibc" and not any(v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        libc = _glibc()
        if libc is not None:
            done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MIB << 20)) and \
                bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_MIB << 20))
    _state["configured"] = done
    return done


def configured() -> bool:
    """Whether :func:`configure` set the thresholds in this process."""
    return bool(_state["configured"])
