"""Threads of the libraries that compute in a diffranb process: numba, OpenCV and torch.

A process of a pool that sorts or times frames must hold each of them to one thread, or every process would
spread over every core and the figures of "one core" or "N processes" would mean nothing.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import numba


def set_threads(numba_threads: int, cv2_threads: int, torch_threads: int | None = None) -> tuple:
    """Set the threads of numba, OpenCV and (if loaded and given) torch; returns the previous three counts."""
    import cv2

    torch = sys.modules.get("torch")
    previous = numba.get_num_threads(), cv2.getNumThreads(), torch.get_num_threads() if torch else None
    numba.set_num_threads(numba_threads)
    cv2.setNumThreads(cv2_threads)
    if torch and torch_threads is not None:
        torch.set_num_threads(torch_threads)
    return previous


@contextmanager
def limited(n: int = 1):
    """Run the body with ``n`` threads for numba, OpenCV and (if loaded) torch; the previous counts are
    restored afterwards."""
    previous = set_threads(n, n, n)
    try:
        yield
    finally:
        set_threads(*previous)
