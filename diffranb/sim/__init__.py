"""The diffraction simulator: nanoBragg's physics, written for speed.

The pieces, each in its own module: :mod:`~diffranb.sim.geometry` (beam, detector, solid angle,
polarisation), :mod:`~diffranb.sim.crystal` (cell, orientation, mosaicity, structure factors),
:mod:`~diffranb.sim.lattice` (lattice transforms), :mod:`~diffranb.sim.bragg` (exact and fast Bragg models),
:mod:`~diffranb.sim.amorphous` (water, air, ice), :mod:`~diffranb.sim.detector` (detector response) and
:mod:`~diffranb.sim.scene` (a whole frame).
"""

from . import amorphous, bragg, crystal, detector, geometry, lattice, reference, scene
from .amorphous import Background, Sample
from .crystal import Crystal, StructureFactors
from .detector import DetectorResponse, ccd_response, pixel_array_response
from .geometry import Beam, Detector
from .scene import Scene, example_scene, expected_photons, render

__all__ = [
    "Background", "Beam", "Crystal", "Detector", "DetectorResponse", "Sample", "Scene", "StructureFactors",
    "amorphous", "bragg", "ccd_response", "crystal", "detector", "example_scene", "expected_photons", "geometry",
    "lattice", "pixel_array_response", "reference", "render", "scene",
]
