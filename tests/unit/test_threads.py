"""Thread counts of numba, OpenCV and torch (diffranb.threads)."""

import cv2
import numba
import pytest

from diffranb import threads


def test_limited_holds_every_library_to_n_threads_and_restores_them():
    before = numba.get_num_threads(), cv2.getNumThreads()
    with threads.limited(1):
        assert numba.get_num_threads() == 1 and cv2.getNumThreads() == 1
    assert (numba.get_num_threads(), cv2.getNumThreads()) == before
    try:
        with threads.limited(1):
            raise KeyError("stop")
    except KeyError:
        pass
    assert (numba.get_num_threads(), cv2.getNumThreads()) == before  # restored on an error too


def test_set_threads_returns_what_it_replaced():
    previous = threads.set_threads(1, 1)
    try:
        assert threads.set_threads(1, 1)[:2] == (1, 1)
    finally:
        threads.set_threads(*previous)
    torch = pytest.importorskip("torch")
    previous = threads.set_threads(1, 1, 1)
    try:
        assert torch.get_num_threads() == 1
    finally:
        threads.set_threads(*previous)
    assert torch.get_num_threads() == previous[2]
