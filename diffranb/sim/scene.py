"""A whole exposure: beam, crystal, amorphous background and detector, rendered into one image."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _validate as v
from .amorphous import Background, background_photons
from .bragg import bragg_exact, bragg_fast
from .crystal import Crystal, StructureFactors, random_rotation
from .detector import DetectorResponse, detect
from .geometry import Beam, Detector

MODELS = ("fast", "exact")

#: Lysozyme, tetragonal P4₃2₁2 (PDB 193L): the crystal of the default scene, Å and degrees.
LYSOZYME_CELL = (79.1, 79.1, 37.9, 90.0, 90.0, 90.0)


@dataclass(frozen=True)
class Scene:
    """Everything that makes one detector frame.

    Attributes
    ----------
    detector : Detector
    beam : Beam
    crystal : Crystal or None
        ``None``: no crystal in the beam (blank or amorphous-only frames).
    background : Background
        Water, air and ice in the beam.
    response : DetectorResponse or None
        ``None``: return the noiseless expected photons.
    model : {"fast", "exact"}
        Bragg model: the analytic one (dataset generation) or nanoBragg's pixel-by-pixel Monte Carlo.
    x_rays : bool
        ``False`` for a dark frame: the detector's response to no photons at all.
    """

    detector: Detector = field(default_factory=Detector)
    beam: Beam = field(default_factory=Beam)
    crystal: Crystal | None = None
    background: Background = field(default_factory=Background)
    response: DetectorResponse | None = None
    model: str = "fast"
    x_rays: bool = True

    def __post_init__(self):
        v.one_of(self, "model", self.model, MODELS)
        for name, cls in (("detector", Detector), ("beam", Beam), ("background", Background)):
            if not isinstance(getattr(self, name), cls):
                v.fail(self, name, getattr(self, name), f"a {cls.__name__}")
        if self.crystal is not None and not isinstance(self.crystal, Crystal):
            v.fail(self, "crystal", self.crystal, "a Crystal or None")
        if self.response is not None and not isinstance(self.response, DetectorResponse):
            v.fail(self, "response", self.response, "a DetectorResponse or None")


def expected_photons(scene: Scene, *, mosaic_seed: int = 0) -> np.ndarray:
    """Noiseless expected photons per pixel: Bragg spots plus amorphous background.

    Parameters
    ----------
    scene : Scene
    mosaic_seed : int
        Seed of the Monte Carlo mosaic domains (exact model only).

    Returns
    -------
    (n_slow, n_fast) float32, photons
    """
    det, beam = scene.detector, scene.beam
    if not scene.x_rays:
        return np.zeros(det.shape, dtype=np.float32)
    image = background_photons(scene.background, beam, det).astype(np.float32)
    if scene.crystal is not None:
        if scene.model == "exact":
            image += bragg_exact(scene.crystal, beam, det, mosaic_seed=mosaic_seed)
        else:
            image += bragg_fast(scene.crystal, beam, det)
    return image


def render(scene: Scene, seed: int = 0, *, noiseless: bool = False) -> np.ndarray:
    """Render one frame.

    Parameters
    ----------
    scene : Scene
    seed : int
        Seeds the detector noise and the Monte Carlo mosaic domains, through independent streams of one
        :class:`numpy.random.SeedSequence`: the same seed gives the same frame.
    noiseless : bool
        Return expected photons even when the scene has a detector response.

    Returns
    -------
    (n_slow, n_fast) float32 photons (no response, or ``noiseless``), else uint16 ADU.
    """
    mosaic_ss, noise_ss = np.random.SeedSequence(seed).spawn(2)
    photons = expected_photons(scene, mosaic_seed=int(mosaic_ss.generate_state(1)[0]))
    if scene.response is None or noiseless:
        return photons
    return detect(photons, scene.response, scene.detector, np.random.default_rng(noise_ss))


def example_scene(seed: int = 0, **crystal_overrides) -> Scene:
    """A realistic serial-crystallography frame: a lysozyme microcrystal in a water jet.

    A 4 µm crystal (blocks of 30 cells, mosaic spread 0.3°, B = 25 Å², uniformly random orientation drawn
    from ``seed``) in a 20 µm water jet with 5 mm of air, 10¹² photons/s for 0.1 s through a 10 µm beam at
    1 Å, a 512 × 512 detector of 0.172 mm pixels at 100 mm, with a CCD-like response. The defaults of the
    book's explorer and of the speed benchmark.
    """
    rng = np.random.default_rng(seed)
    block = (30, 30, 30)
    block_volume = float(np.prod(block)) * Crystal(cell=LYSOZYME_CELL).volume_A3
    crystal_kw = dict(cell=LYSOZYME_CELL, cells_abc=block, shape="gauss", rotation=_as_tuple(random_rotation(rng)),
                      mosaic_spread_deg=0.3, n_blocks=(4e4) ** 3 / block_volume,
                      structure=StructureFactors(kind="wilson", b_factor_A2=25.0, seed=seed))
    crystal_kw.update(crystal_overrides)
    return Scene(
        detector=Detector(distance_mm=100.0),
        beam=Beam(wavelength_A=1.0, flux_ph_per_s=1e12, exposure_s=0.1, beamsize_mm=0.01, kahn_polarization=0.95,
                  bandpass=0.002, divergence_mrad=0.1),
        crystal=Crystal(**crystal_kw),
        background=Background(water_thickness_um=20.0, air_path_mm=5.0),
        response=DetectorResponse(),
    )


def _as_tuple(m: np.ndarray) -> tuple:
    return tuple(tuple(float(x) for x in row) for row in m)
