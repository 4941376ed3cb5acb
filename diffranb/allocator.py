"""How the C allocator hands out the large temporary arrays of per-frame work.

Sorting one frame allocates and frees a few dozen arrays of one to a few MiB (a 512² frame in float32 is
1 MiB, its int64 indices 2 MiB). glibc serves a block above its *mmap threshold* (128 KiB at start, raised
only when such a block is freed) with fresh pages from the kernel, and returns freed memory above its *trim
threshold* at the top of the heap. Either way the next frame's arrays land on new pages, and the kernel must
zero every page on first touch: measured here, 2,200 page faults and about half of the time of the spot
statistics of one 512² frame, in a process that had not happened to free a large block first (process pool
workers holding their frames, for one). Which processes were slow depended on their history.

:func:`configure` sets both thresholds where glibc's own adjustment would end after freeing a block of
32 MiB, but from the start, whatever the process did before: blocks up to :data:`MMAP_THRESHOLD_MIB` are
reused from the heap and up to :data:`TRIM_THRESHOLD_MIB` of freed memory at the heap's top stays with the
process. Larger blocks (a chunk of a data set's frames, a network's largest activations) are still mapped and
unmapped as before. The cost, as in any process where glibc has raised its thresholds itself: freed blocks
below the threshold go back to the heap, not to the kernel, and the heap only shrinks from its top, so a
process that frees many such blocks while keeping later allocations alive holds that memory until it is
reused. ``import diffranb`` calls :func:`configure` once.

Set ``DIFFRANB_MALLOC=glibc`` to keep glibc's own behaviour (``diffranb bench malloc`` compares the two in
one run). Nothing is changed off glibc, or where the process was started with glibc's own settings for
these thresholds (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``glibc.malloc.*`` in
``GLIBC_TUNABLES``): those are the user's choice.

Reference: the GNU C Library manual, "Memory Allocation Tunables", and mallopt(3).
"""

from __future__ import annotations

import ctypes
import logging
import os

#: Blocks up to this size come from the heap and are reused: glibc's own ceiling on 64-bit systems, which its
#: threshold reaches by itself once a block that large has been freed. A lower one (8 MiB holds every
#: temporary of a 512² frame) would map DeepFreak's larger activations afresh at every step: training ran
#: at two thirds of its speed (``diffranb bench malloc``).
MMAP_THRESHOLD_MIB = 32
#: Freed memory at the top of the heap is kept up to this size before it is returned to the kernel (twice
#: the mmap threshold, as glibc sets it when it raises that).
TRIM_THRESHOLD_MIB = 64
#: mallopt(3) parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: The environment variable that turns :func:`configure` off (value ``glibc``).
ENV = "DIFFRANB_MALLOC"
#: glibc's own environment settings of the same thresholds.
GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_state = {"configured": None}
_log = logging.getLogger(__name__)


def _glibc():
    """glibc's C library as a ctypes handle, or None where the C library is another (musl, macOS, Windows)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL("libc.so.6")
    except (AttributeError, ValueError, OSError):  # no confstr (Windows), unknown name, no such library
        return None


def _user_settings() -> bool:
    """Whether the process was started with glibc's own settings of the thresholds."""
    return any(v in os.environ for v in GLIBC_VARIABLES) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def configure() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (see the module's text); True if they were set.

    Idempotent. Nothing is changed, and False returned, when ``DIFFRANB_MALLOC=glibc`` (any other value is
    logged as not understood and counts as that), when glibc's own settings of the thresholds are in the
    environment, or off glibc.
    """
    if _state["configured"] is not None:
        return _state["configured"]
    setting = os.environ.get(ENV, "")
    if setting not in ("", "glibc"):  # called on import: say so, and change nothing
        _log.warning("%s=%r is not understood (only 'glibc', for glibc's own behaviour); glibc's thresholds are "
                     "left as they are", ENV, setting)
        setting = "glibc"
    done = False
    if setting != "glibc" and not _user_settings():
        libc = _glibc()
        if libc is not None:
            done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MIB << 20)) and \
                bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_MIB << 20))
    _state["configured"] = done
    return done


def configured() -> bool:
    """Whether :func:`configure` set the thresholds in this process."""
    return bool(_state["configured"])
