"""diffranb: simulate and classify serial-crystallography diffraction images.

A reproduction, and extension, of DiffraNet (Souza et al., 2019): a physics simulator with nanoBragg's
model (:mod:`diffranb.sim`) and the classifiers that sort frames into blank / no-crystal / weak / good /
strong.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("diffranb")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

from . import allocator as _allocator

_allocator.configure()  # glibc: reuse per-frame temporaries instead of faulting in fresh pages every frame

__all__ = ["__version__"]
