"""Fixtures shared by the unit tests."""

import pytest

from diffranb import dataset


@pytest.fixture(scope="session")
def classic_tiny_set(tmp_path_factory):
    """80 frames of 128² (built once per session): the set of the feature, classic, tuning and stacking tests,
    and of DeepFreak's spot input (its detector mask is not empty)."""
    return dataset.build(80, 0, tmp_path_factory.getbasetemp() / "classic_tiny.h5", pixels=128, workers=0,
                         progress=False)


@pytest.fixture(scope="session")
def tiny_set(classic_tiny_set):
    """:func:`classic_tiny_set`; ``test_deepfreak.py`` overrides it with a set of 64² frames."""
    return classic_tiny_set
