"""The DiffraNet-scale data set: five (or six) classes of detector frames, each defined by physics.

DiffraNet (Souza et al. 2019) sorts serial-crystallography frames into *blank*, *no-crystal*, *weak*, *good*
and *strong*, but its images cannot be downloaded and nobody published how its classes were made. Here every
frame is simulated with :mod:`diffranb.sim` and labelled by a quantity computed from its noiseless truth:

- **blank**: no X-rays; the detector alone (gain pattern, read-out noise, ADC offset, hot and dead pixels).
- **no-crystal**: X-rays on the carrier (water jet, air path) but no crystal: rings, no spots.
- **weak / good / strong**: a crystal in the beam, cut by the number of its reflections whose integrated
  signal reaches I/σ ≥ 3 against the local background (:func:`reflection_table`, :func:`count_significant`).
- **ice** (optional sixth class): hexagonal-ice powder rings (a badly prepared sample), with or without a
  crystal, cut by the per-pixel contrast of the strongest ice ring (:func:`ice_ring_contrast`).

Each image draws a target class, then the parameters a beamline varies (orientation, crystal form, size,
mosaicity, B-factor, fluence, wavelength, distance, beam centre, water, air, read-out noise, beamstop), with
the crystal size chosen so that the defining quantity falls in the target class's interval; the stored label
is what the quantity says. Every drawn parameter is stored, so any frame can be rendered again from its row
(:func:`scene_from_params`), and the quantities are stored, so classes can be re-cut without simulating
(:func:`relabel`).

References
----------
A. Souza et al., "DeepFreak: learning crystallography diffraction patterns with automated machine learning"
(2019), the paper that introduced DiffraNet. https://arxiv.org/abs/1904.11834
J. M. Holton, K. A. Frankel, Acta Cryst. D66, 393–408 (2010). https://doi.org/10.1107/S0907444910007262
A. G. W. Leslie, "The integration of macromolecular diffraction data", Acta Cryst. D62, 48–57 (2006).
https://doi.org/10.1107/S0907444905039107 (summation integration and its σ).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from .sim.amorphous import Background, Sample, background_photons, sample_photons
from .sim.bragg import CUTOFF_SIGMA, bragg_fast, lattice_covariance, max_q
from .sim.constants import R_E_SQ_M2
from .sim.crystal import (Crystal, StructureFactors, amplitude_source, mosaic_angle_rms_rad, random_rotation,
                          structure_amplitude)
from .sim.detector import DetectorResponse, beamstop_transmission
from .sim.geometry import Beam, Detector, polarization
from .sim.scene import Scene

# ---------------------------------------------------------------------------------------------------------
# Classes
# ---------------------------------------------------------------------------------------------------------

#: The five DiffraNet classes, in order of increasing Bragg signal; their index is the stored label code.
CLASSES = ("blank", "no-crystal", "weak", "good", "strong")
#: The optional sixth class; its label code is 5.
ICE = "ice"
ALL_CLASSES = CLASSES + (ICE,)

#: Class shares of the published DiffraNet test set (Souza et al. 2019), the default targets.
DIFFRANET_SHARES = {"blank": 0.164, "no-crystal": 0.259, "weak": 0.266, "good": 0.194, "strong": 0.117}
#: Share of ice frames when the ice class is selected; the five others are scaled to fill the rest.
DEFAULT_ICE_SHARE = 0.10

#: Train / validation / test shares of DiffraNet (10,000 / 2,400 / 12,600 of 25,000 images).
SPLITS = ("train", "val", "test")
SPLIT_SHARES = (0.40, 0.096, 0.504)


@dataclass(frozen=True)
class Cuts:
    """Where the classes are cut on their defining quantities.

    A frame with X-rays is *ice* when the ice class is selected and its ice rings reach ``ice_contrast``;
    otherwise it is *strong*, *good* or *weak* when at least ``strong``, ``good`` or ``weak`` of its
    reflections reach I/σ ≥ ``min_i_over_sigma``, and *no-crystal* below that.

    Attributes
    ----------
    weak, good, strong : int, reflections
        Fewest significant reflections of a weak, good and strong frame.
    min_i_over_sigma : float
        Significance of one reflection's integrated signal against its local background.
    ice_contrast : float
        Per-pixel contrast (ring photons over the rms noise of a pixel) of the strongest ice ring.
    """

    weak: int = 5  # reflections
    good: int = 40  # reflections
    strong: int = 150  # reflections
    min_i_over_sigma: float = 3.0  # dimensionless
    ice_contrast: float = 1.0  # dimensionless

    def __post_init__(self):
        for name in ("weak", "good", "strong"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Cuts.{name} = {value!r}: must be a whole number ≥ 1")
        if not self.weak < self.good < self.strong:
            raise ValueError(f"Cuts = ({self.weak}, {self.good}, {self.strong}): must satisfy weak < good < strong")
        for name in ("min_i_over_sigma", "ice_contrast"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"Cuts.{name} = {value!r}: must be a finite number > 0")

    def interval(self, name: str) -> tuple[int, float]:
        """[lowest, highest) count of significant reflections of crystal class ``name``."""
        return {"no-crystal": (0, self.weak), "weak": (self.weak, self.good), "good": (self.good, self.strong),
                "strong": (self.strong, math.inf)}[name]


def label_codes(x_rays, n_significant, ice_contrast, *, cuts: Cuts = Cuts(), ice: bool = False) -> np.ndarray:
    """Class label codes (indices into :data:`ALL_CLASSES`) from the defining quantities.

    Parameters
    ----------
    x_rays : (n,) bool
    n_significant : (n,) int
        Reflections with I/σ ≥ ``cuts.min_i_over_sigma`` (:func:`count_significant`).
    ice_contrast : (n,) float
        :func:`ice_ring_contrast` (0 without ice).
    cuts : Cuts
    ice : bool
        Whether the ice class exists in this set.

    Returns
    -------
    (n,) uint8
    """
    x_rays = np.asarray(x_rays, dtype=bool)
    n = np.asarray(n_significant)
    codes = np.select([n >= cuts.strong, n >= cuts.good, n >= cuts.weak], [4, 3, 2], default=1)
    if ice:
        codes = np.where(np.asarray(ice_contrast) >= cuts.ice_contrast, 5, codes)
    return np.where(x_rays, codes, 0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# What varies from frame to frame
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CrystalForm:
    """A protein crystal form: name, space group and cell (a, b, c in Å; α, β, γ in degrees)."""

    name: str
    space_group: str
    cell: tuple


#: Primitive crystal forms of proteins used in serial crystallography, with their published room-temperature
#: or cryo cells rounded to 0.1 Å. Only primitive lattices: the simulator puts a Wilson-random F on every
#: (h, k, l), which is right for P lattices up to the few screw-axis absences, and would double the spots
#: of a centred one. Sources: lysozyme, PDB 193L; thaumatin, Diamond I04 test data (xia2: 57.78, 57.78,
#: 150.00 Å); thermolysin, LCLS SFX (Hattne et al. 2014); sperm-whale myoglobin, PDB 1MBO, whose a, b, c are up
#: to 0.8 % longer; PYP, BioCARS Laue data (c = 40.95 Å); bovine trypsin, not yet checked against a source.
CRYSTAL_FORMS = (
    CrystalForm("lysozyme", "P4₃2₁2", (79.1, 79.1, 37.9, 90.0, 90.0, 90.0)),
    CrystalForm("thaumatin", "P4₁2₁2", (57.8, 57.8, 150.0, 90.0, 90.0, 90.0)),
    CrystalForm("thermolysin", "P6₁22", (93.2, 93.2, 130.7, 90.0, 90.0, 120.0)),
    CrystalForm("myoglobin", "P2₁", (64.1, 30.8, 34.8, 90.0, 105.8, 90.0)),
    CrystalForm("photoactive yellow protein", "P6₃", (66.9, 66.9, 40.8, 90.0, 90.0, 120.0)),
    CrystalForm("trypsin", "P2₁2₁2₁", (54.9, 58.4, 67.4, 90.0, 90.0, 90.0)),
)


@dataclass(frozen=True)
class Ranges:
    """Ranges of the parameters drawn for the frames (uniform unless marked log-uniform).

    As at a beamline, frames come in runs of ``frames_per_run``: the setup (wavelength, detector distance,
    beam centre, air path, detector noise level, beamstop) is drawn once per run, while the pulse's flux, the
    jet's water thickness, the crystal and the ice change from frame to frame. The fixed fields describe the
    instrument: a 10 µm beam of 0.1 s exposures, 0.2 % bandpass and 0.1 mrad divergence, a detector of
    512 × 0.172 mm pixels with a fibre-coupled CCD response. Every other field is a (low, high) range.
    """

    wavelength_A: tuple = (0.9, 1.4)  # Å
    flux_ph_per_s: tuple = (3e11, 3e12)  # photons/s, log-uniform
    distance_mm: tuple = (80.0, 150.0)  # mm
    beam_center_jitter_mm: float = 0.5  # mm, rms of each coordinate (normal, clipped at 3σ)
    water_thickness_um: tuple = (5.0, 40.0)  # µm
    air_path_mm: tuple = (2.0, 30.0)  # mm
    readout_noise_adu: tuple = (1.0, 8.0)  # ADU rms
    beamstop_radius_mm: tuple = (1.0, 3.0)  # mm
    crystal_size_um: tuple = (0.3, 10.0)  # µm, cube edge, log-uniform (within the class's interval)
    domain_size_um: tuple = (0.1, 0.5)  # µm, mosaic block edge, log-uniform
    mosaic_spread_deg: tuple = (0.03, 0.5)  # degrees, log-uniform
    b_factor_A2: tuple = (15.0, 60.0)  # Å²
    ice_thickness_um: tuple = (0.05, 3.0)  # µm, log-uniform (within the ice class's interval)
    ice_crystallite_nm: tuple = (20.0, 200.0)  # nm, log-uniform
    ice_crystal_fraction: float = 0.5  # share of ice frames that also hold a crystal
    exposure_s: float = 0.1  # s
    beamsize_mm: float = 0.01  # mm
    bandpass: float = 0.002  # Δλ/λ
    divergence_mrad: float = 0.1  # mrad
    kahn_polarization: float = 0.95  # dimensionless
    detector_mm: float = 88.064  # mm, edge of the square detector (512 × 0.172 mm)
    frames_per_run: int = 16  # frames sharing one beamline setup

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                if len(value) != 2 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in value) \
                        or not 0 <= value[0] <= value[1]:
                    raise ValueError(f"Ranges.{f.name} = {value!r}: must be (low, high) with 0 ≤ low ≤ high")
            elif not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Ranges.{f.name} = {value!r}: must be a finite number ≥ 0")
        if not (isinstance(self.frames_per_run, int) and self.frames_per_run >= 1):
            raise ValueError(f"Ranges.frames_per_run = {self.frames_per_run!r}: must be a whole number ≥ 1")


#: Draws of a crystal (form, orientation, mosaicity, ...) tried before a frame settles for the nearest size.
MAX_ATTEMPTS = 30
#: Side of the square box of pixels a reflection's background and read-out noise are summed over: spots on
#: 0.172 mm pixels are about one pixel wide, and the fibre PSF keeps ≈ 95 % of a photon within 3 × 3.
SPOT_BOX_PX = 3
#: Pixels of the brightest ice ring: those within this fraction of the ice image's maximum.
ICE_RING_LEVEL = 0.5

#: The columns stored for every frame: what was drawn (and what the scene is rebuilt from) and the
#: quantities that define its class. Integer columns are int64 (−1 where not drawn), the rest float64 (NaN
#: where not drawn).
PARAM_COLUMNS = (
    "x_rays", "has_crystal", "attempts", "noise_seed",
    "wavelength_A", "flux_ph_per_s", "distance_mm", "beam_center_slow_px", "beam_center_fast_px",
    "water_thickness_um", "air_path_mm", "ice_thickness_um", "ice_crystallite_nm",
    "readout_noise_adu", "beamstop_radius_mm",
    "crystal_form", "cell_a_A", "cell_b_A", "cell_c_A", "cell_alpha_deg", "cell_beta_deg", "cell_gamma_deg",
    "crystal_size_um", "domain_size_um", "cells_a", "cells_b", "cells_c", "mosaic_spread_deg", "b_factor_A2",
    "structure_seed", "r00", "r01", "r02", "r10", "r11", "r12", "r20", "r21", "r22",
)
QUANTITY_COLUMNS = ("n_significant", "n_reflections", "resolution_A", "bragg_photons", "background_photons",
                    "ice_contrast", "n_blocks")
INT_COLUMNS = frozenset({"x_rays", "has_crystal", "attempts", "noise_seed", "crystal_form", "cells_a", "cells_b",
                         "cells_c", "structure_seed", "n_significant", "n_reflections"})


def detector_for(pixels: int, ranges: Ranges, beam_center_px=None, distance_mm: float = 100.0) -> Detector:
    """The data set's detector: ``pixels`` square pixels spanning ``ranges.detector_mm``."""
    return Detector(n_slow=pixels, n_fast=pixels, pixel_mm=ranges.detector_mm / pixels, distance_mm=distance_mm,
                    beam_center_px=beam_center_px)


def response_for(readout_noise_adu: float, beamstop_radius_mm: float) -> DetectorResponse:
    """The data set's detector response: the default CCD with this read-out noise and beamstop."""
    return DetectorResponse(readout_noise_adu=float(readout_noise_adu), beamstop_radius_mm=float(beamstop_radius_mm))


def scene_from_params(p: dict, pixels: int = 512, ranges: Ranges = Ranges()) -> Scene:
    """Rebuild a frame's scene from its stored parameters (one row of the ``params`` columns).

    ``render(scene_from_params(row), seed=row["noise_seed"])`` reproduces the stored frame bit for bit.

    Parameters
    ----------
    p : mapping of column name to scalar
        The :data:`PARAM_COLUMNS` of one frame.
    pixels : int
        Detector edge in pixels, as built.
    ranges : Ranges
        The instrument the set was built with (its fixed fields).
    """
    det = detector_for(pixels, ranges, (float(p["beam_center_slow_px"]), float(p["beam_center_fast_px"])),
                       float(p["distance_mm"]))
    beam = Beam(wavelength_A=float(p["wavelength_A"]), flux_ph_per_s=float(p["flux_ph_per_s"]),
                exposure_s=ranges.exposure_s, beamsize_mm=ranges.beamsize_mm,
                kahn_polarization=ranges.kahn_polarization, bandpass=ranges.bandpass,
                divergence_mrad=ranges.divergence_mrad)
    ice = float(p["ice_thickness_um"])
    background = Background(water_thickness_um=float(p["water_thickness_um"]), air_path_mm=float(p["air_path_mm"]),
                            ice_thickness_um=ice,
                            ice_crystallite_nm=float(p["ice_crystallite_nm"]) if ice > 0 else 50.0)
    crystal = None
    if int(p["has_crystal"]):
        cell = tuple(float(p[k]) for k in ("cell_a_A", "cell_b_A", "cell_c_A", "cell_alpha_deg", "cell_beta_deg",
                                           "cell_gamma_deg"))
        rotation = tuple(tuple(float(p[f"r{i}{j}"]) for j in range(3)) for i in range(3))
        crystal = Crystal(cell=cell, cells_abc=(int(p["cells_a"]), int(p["cells_b"]), int(p["cells_c"])),
                          shape="gauss", rotation=rotation, mosaic_spread_deg=float(p["mosaic_spread_deg"]),
                          n_blocks=float(p["n_blocks"]),
                          structure=StructureFactors(kind="wilson", b_factor_A2=float(p["b_factor_A2"]),
                                                     seed=int(p["structure_seed"])))
    return Scene(detector=det, beam=beam, crystal=crystal, background=background,
                 response=response_for(p["readout_noise_adu"], p["beamstop_radius_mm"]),
                 x_rays=bool(int(p["x_rays"])))


# ---------------------------------------------------------------------------------------------------------
# The defining quantity: reflections with I/σ ≥ 3
# ---------------------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _reflection_kernel(ns, nf, s_beam, f_beam, pixel_mm, distance_mm, lam, recip, cov_lattice, sig_mos2, sig_bw2,
                       sig_div2, kahn, q_max, hkl_max, sf_mode, default_F, grid, seed, wilson_mean, out_hkl, out):
    # Walks only the shell of reciprocal space near the Ewald sphere, row by row in (h, k), like bragg_fast.
    n = 0
    cap = out.shape[0]
    inv_lam = 1.0 / lam
    cut2 = CUTOFF_SIGMA * CUTOFF_SIGMA
    spread = math.sqrt(cov_lattice[0, 0] + cov_lattice[1, 1] + cov_lattice[2, 2]
                       + (sig_mos2 + sig_bw2) * q_max * q_max + sig_div2 * inv_lam * inv_lam)
    delta = CUTOFF_SIGMA * spread
    r_in2 = max(inv_lam - delta, 0.0) ** 2
    r_out2 = (inv_lam + delta) ** 2
    cs = recip[2]
    cc = cs[0] * cs[0] + cs[1] * cs[1] + cs[2] * cs[2]
    for h in range(-hkl_max[0], hkl_max[0] + 1):
        for k in range(-hkl_max[1], hkl_max[1] + 1):
            ux = h * recip[0, 0] + k * recip[1, 0] + inv_lam
            uy = h * recip[0, 1] + k * recip[1, 1]
            uz = h * recip[0, 2] + k * recip[1, 2]
            bq = ux * cs[0] + uy * cs[1] + uz * cs[2]
            uu = ux * ux + uy * uy + uz * uz
            disc_out = bq * bq - cc * (uu - r_out2)
            if disc_out < 0.0:
                continue
            root = math.sqrt(disc_out)
            l_lo = int(math.ceil((-bq - root) / cc))
            l_hi = int(math.floor((-bq + root) / cc))
            disc_in = bq * bq - cc * (uu - r_in2)
            skip_lo, skip_hi = 1, 0
            if disc_in > 0.0:
                root_in = math.sqrt(disc_in)
                skip_lo = int(math.floor((-bq - root_in) / cc)) + 1
                skip_hi = int(math.ceil((-bq + root_in) / cc)) - 1
            for l in range(l_lo, l_hi + 1):
                if skip_lo <= l <= skip_hi:
                    continue
                gx = h * recip[0, 0] + k * recip[1, 0] + l * recip[2, 0]
                gy = h * recip[0, 1] + k * recip[1, 1] + l * recip[2, 1]
                gz = h * recip[0, 2] + k * recip[1, 2] + l * recip[2, 2]
                g2 = gx * gx + gy * gy + gz * gz
                if g2 == 0.0 or g2 > q_max * q_max:
                    continue
                px, py, pz = gx + inv_lam, gy, gz
                pn = math.sqrt(px * px + py * py + pz * pz)
                dx, dy, dz = px / pn, py / pn, pz / pn
                if dx <= 0.0:
                    continue
                eps = pn - inv_lam
                gd = gx * dx + gy * dy + gz * dz
                var_n = (dx * (cov_lattice[0, 0] * dx + cov_lattice[0, 1] * dy + cov_lattice[0, 2] * dz)
                         + dy * (cov_lattice[1, 0] * dx + cov_lattice[1, 1] * dy + cov_lattice[1, 2] * dz)
                         + dz * (cov_lattice[2, 0] * dx + cov_lattice[2, 1] * dy + cov_lattice[2, 2] * dz)
                         + sig_mos2 * (g2 - gd * gd) + sig_bw2 * gd * gd
                         + sig_div2 * inv_lam * inv_lam * (1.0 - dx * dx))
                if eps * eps > cut2 * var_n:
                    continue
                t = distance_mm / px
                slow = s_beam - t * py / pixel_mm
                fast = f_beam + t * pz / pixel_mm
                if not (-0.5 <= slow <= ns - 0.5 and -0.5 <= fast <= nf - 0.5):
                    continue
                if n < cap:
                    amp = structure_amplitude(h, k, l, 0.5 * math.sqrt(g2), sf_mode, default_F, grid, seed,
                                              wilson_mean)
                    out_hkl[n, 0], out_hkl[n, 1], out_hkl[n, 2] = h, k, l
                    out[n, 0] = slow
                    out[n, 1] = fast
                    out[n, 2] = 1.0 / math.sqrt(g2)
                    out[n, 3] = eps
                    out[n, 4] = math.sqrt(var_n)
                    out[n, 5] = amp * amp
                    out[n, 6] = polarization(dx, dy, dz, kahn)
                n += 1
    return n


def reflection_table(scene: Scene, background: np.ndarray | None = None, *, min_i_over_sigma: float = 3.0) -> dict:
    """Every reflection of the scene's crystal on the detector, with its integrated signal and its noise.

    The reflections are those :func:`diffranb.sim.bragg.bragg_fast` draws (excitation error within
    ``CUTOFF_SIGMA`` of its radial spread, spot on the detector). The fast model spreads reflection G as a
    3-D Gaussian of integrated weight |F|²·Na·Nb·Nc/V_cell; integrated over the pixels, i.e. over the Ewald
    sphere, where dΩ = λ²·dA_q, it gives

        S_G = r_e²·Φ·n_blocks·P·|F|²·(Na·Nb·Nc/V_cell)·λ²·φ(ε; σ_n),

    with φ the normal density of the excitation error ε for the spot's radial spread σ_n (photons; the
    Gaussian's marginal across the sphere). The beamstop shadow multiplies S_G by its transmission at the spot.
    The noise of a summation integration over a box of :data:`SPOT_BOX_PX`² pixels with a known background
    B (the noiseless amorphous photons in the box) is σ² = S + B + n_box·σ_read², so a reflection is
    significant (I/σ ≥ k) once S ≥ S*, S* = (k² + √(k⁴ + 4k²(B + n_box·σ_read²)))/2. As S ∝ n_blocks, each
    reflection has a crystal volume, ``threshold_blocks``, from which on it counts.

    Parameters
    ----------
    scene : Scene
        With a crystal and a detector response.
    background : (n_slow, n_fast) array, photons, optional
        The scene's noiseless amorphous background (computed when not given).
    min_i_over_sigma : float
        k above.

    Returns
    -------
    dict of (n,) arrays
        ``h``, ``k``, ``l`` (int64); ``slow``, ``fast`` (float64, pixels); ``d_A`` (float64, Å);
        ``photons_per_block`` (float64: S_G / n_blocks, beamstop included); ``background`` (float64, photons
        in the box); ``noise_floor`` (float64, photons²: B + n_box·σ_read², the variance of the box without
        the signal); ``threshold_blocks`` (float64, inf for reflections that never count).

    References
    ----------
    A. G. W. Leslie, Acta Cryst. D62, 48–57 (2006). https://doi.org/10.1107/S0907444905039107
    """
    crystal, beam, det, resp = scene.crystal, scene.beam, scene.detector, scene.response
    if crystal is None or resp is None:
        raise ValueError("reflection_table: the scene needs a crystal and a detector response")
    recip = crystal.reciprocal_vectors()
    q_max = max_q(det, beam)
    hkl_max = np.floor(q_max * np.linalg.norm(crystal.real_vectors(), axis=1)).astype(np.int64) + 1
    amp = amplitude_source(crystal, 0.5 * q_max + 0.01)
    sig_mos2 = mosaic_angle_rms_rad(crystal.mosaic_spread_deg) ** 2
    sig_bw2 = (beam.bandpass / math.sqrt(12.0)) ** 2
    sig_div2 = (beam.divergence_mrad * 1e-3 / 4.0) ** 2
    s_beam, f_beam = det.beam_center
    cov = lattice_covariance(crystal)
    cap = 4096
    while True:
        hkl = np.empty((cap, 3), dtype=np.int64)
        cols = np.empty((cap, 7))
        n = _reflection_kernel(det.n_slow, det.n_fast, s_beam, f_beam, det.pixel_mm, det.distance_mm,
                               beam.wavelength_A, recip, cov, sig_mos2, sig_bw2, sig_div2, beam.polarization_factor_K,
                               q_max, hkl_max, *amp, hkl, cols)
        if n <= cap:
            break
        cap = n
    hkl, cols = hkl[:n], cols[:n]
    slow, fast, d, eps, sigma, f2, pol = cols.T
    phi = np.exp(-0.5 * (eps / sigma) ** 2) / (math.sqrt(2.0 * math.pi) * sigma)
    weight = float(np.prod(crystal.cells_abc)) / crystal.volume_A3
    transmission = beamstop_transmission(resp, det)
    i = np.clip(np.rint(slow).astype(np.int64), 0, det.n_slow - 1)
    j = np.clip(np.rint(fast).astype(np.int64), 0, det.n_fast - 1)
    per_block = R_E_SQ_M2 * beam.fluence * pol * f2 * weight * beam.wavelength_A ** 2 * phi * transmission[i, j]
    if background is None:
        background = background_photons(scene.background, beam, det)
    box_bg, box_n = _box_sums(np.asarray(background, dtype=np.float64) * transmission, i, j, SPOT_BOX_PX // 2)
    read = resp.readout_noise_adu / resp.adu_per_photon
    floor = box_bg + box_n * read * read
    needed = significance_threshold(floor, min_i_over_sigma)
    with np.errstate(divide="ignore"):
        threshold = np.where(per_block > 0, needed / per_block, np.inf)
    return {"h": hkl[:, 0].copy(), "k": hkl[:, 1].copy(), "l": hkl[:, 2].copy(), "slow": slow, "fast": fast,
            "d_A": d, "photons_per_block": per_block, "background": box_bg, "noise_floor": floor,
            "threshold_blocks": threshold}


def _box_sums(image, i, j, half):
    """Sum of ``image`` over the (2·half+1)² box around each (i, j), clipped at the edges, and its pixel count."""
    ns, nf = image.shape
    total = np.zeros(len(i))
    count = np.zeros(len(i), dtype=np.int64)
    for di in range(-half, half + 1):
        for dj in range(-half, half + 1):
            ii, jj = i + di, j + dj
            inside = (ii >= 0) & (ii < ns) & (jj >= 0) & (jj < nf)
            total += np.where(inside, image[np.clip(ii, 0, ns - 1), np.clip(jj, 0, nf - 1)], 0.0)
            count += inside
    return total, count


def count_significant(table: dict, n_blocks: float) -> tuple[int, float]:
    """Reflections with I/σ above the table's threshold for a crystal of ``n_blocks`` blocks, and the
    resolution they reach.

    Returns
    -------
    n : int
    d_min : float, Å
        Smallest d-spacing among them; NaN when there is none.
    """
    sig = table["threshold_blocks"] <= n_blocks
    n = int(sig.sum())
    return n, float(table["d_A"][sig].min()) if n else math.nan


def ice_ring_contrast(ice: np.ndarray, other: np.ndarray, readout_noise_photons: float,
                      transmission: np.ndarray | None = None) -> float:
    """Per-pixel contrast of the brightest ice ring: its mean ice photons over the rms noise of a pixel.

    The ring is the set of pixels where the ice image reaches :data:`ICE_RING_LEVEL` of its maximum;
    the noise of a pixel is √(ice + other + σ_read²) (Poisson and read-out), averaged over the ring.

    Parameters
    ----------
    ice : (M, N) array, photons
        Noiseless ice scattering alone.
    other : (M, N) array, photons
        Everything else (water, air, Bragg).
    readout_noise_photons : float, photons rms
    transmission : (M, N) array, optional
        Beamstop transmission, applied to both.

    Returns
    -------
    float, dimensionless; 0 when there is no ice.
    """
    if transmission is not None:
        ice, other = ice * transmission, other * transmission
    top = float(ice.max())
    if top <= 0:
        return 0.0
    ring = ice >= ICE_RING_LEVEL * top
    noise = math.sqrt(float(np.mean(ice[ring] + other[ring])) + readout_noise_photons ** 2)
    return float(np.mean(ice[ring])) / noise


# ---------------------------------------------------------------------------------------------------------
# Drawing one frame
# ---------------------------------------------------------------------------------------------------------

#: Streams of the build seed: spawn key (0,) assigns classes and splits, (1, i) draws image i and (2, r) the
#: setup of run r.
_ASSIGN_KEY, _IMAGE_KEY, _RUN_KEY = 0, 1, 2


def image_seed_sequence(seed: int, index: int) -> np.random.SeedSequence:
    """The seed sequence of image ``index``: a function of (seed, index) alone, never of workers or order."""
    return np.random.SeedSequence(seed, spawn_key=(_IMAGE_KEY, index))


def _log_uniform(rng, lo, hi):
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


#: Significant digits kept of the quantities a frame derives by floating-point arithmetic from its draws
#: (:func:`_derived`), and the columns that hold them.
DERIVED_DIGITS = 10
DERIVED_COLUMNS = ("n_blocks", "crystal_size_um", "bragg_photons", "background_photons", "ice_thickness_um",
                   "ice_contrast")


def _derived(x: float) -> float:
    """A derived quantity, rounded to :data:`DERIVED_DIGITS` significant digits before it is used or recorded.

    numpy picks its SIMD loops for the CPU it runs on, and its AVX-512 loops for exp and cbrt round some results
    differently in the last bit from its AVX2 loops. Those bits reach the crystal's size, its number of blocks
    and the photon totals (a full build with each kind of loop disagreed in 7,209 crystal sizes), and so the
    content hash, though every frame and label agreed. Rounded to ten digits, far below any physical
    uncertainty, a value differs between the two only when a last-bit difference straddles a rounding
    boundary: about once in 10⁶ values.
    """
    return float(f"{x:.{DERIVED_DIGITS}g}")


def draw_run(seed: int, run: int, *, pixels: int = 512, ranges: Ranges = Ranges()) -> dict:
    """The beamline setup of run ``run``: wavelength, distance, beam centre, air, noise level, beamstop.

    Returns
    -------
    dict
        The run's entries of :data:`PARAM_COLUMNS`.
    """
    r = ranges
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_RUN_KEY, run)))
    pixel_mm = r.detector_mm / pixels
    setup = {"wavelength_A": float(rng.uniform(*r.wavelength_A)), "distance_mm": float(rng.uniform(*r.distance_mm))}
    jitter = np.clip(rng.normal(0.0, r.beam_center_jitter_mm, 2), -3 * r.beam_center_jitter_mm,
                     3 * r.beam_center_jitter_mm) / pixel_mm
    setup["beam_center_slow_px"] = float(pixels / 2.0 + jitter[0])
    setup["beam_center_fast_px"] = float(pixels / 2.0 + jitter[1])
    setup["air_path_mm"] = float(rng.uniform(*r.air_path_mm))
    setup["readout_noise_adu"] = float(rng.uniform(*r.readout_noise_adu))
    setup["beamstop_radius_mm"] = float(rng.uniform(*r.beamstop_radius_mm))
    return setup


def draw_frame(seed: int, index: int, target: str, *, pixels: int = 512, ranges: Ranges = Ranges(),
               cuts: Cuts = Cuts()) -> tuple[Scene, dict]:
    """Draw the scene of image ``index`` of target class ``target``, and its defining quantities.

    The run's setup comes from :func:`draw_run` (run ``index // ranges.frames_per_run``); the frame then
    draws its flux and water thickness, the same way for every class, so that no class can be told by its
    background alone. Crystal classes draw a crystal form, a uniform orientation, a mosaic block size, a
    mosaic spread and a B-factor, compute the reflections' thresholds (:func:`reflection_table`), and take
    the crystal size log-uniformly within the part of ``ranges.crystal_size_um`` whose count of significant
    reflections falls in the target's interval; if that part is empty the crystal is drawn again, up to
    :data:`MAX_ATTEMPTS` times, after which the size nearest the interval is kept and the label says what the
    frame shows. Ice frames take their thickness likewise so that the ring contrast reaches
    ``cuts.ice_contrast``, and hold a crystal of a random crystal class with probability
    ``ranges.ice_crystal_fraction``.

    Parameters
    ----------
    seed : int
        The data set's seed.
    index : int
        The image's index; with ``seed`` it fixes every draw (:func:`image_seed_sequence`).
    target : str
        One of :data:`ALL_CLASSES`.
    pixels : int
        Detector edge, pixels (the detector's size in mm stays ``ranges.detector_mm``).
    ranges : Ranges
    cuts : Cuts

    Returns
    -------
    scene : Scene
        With the detector response; render it with ``seed=params["noise_seed"]``.
    params : dict
        :data:`PARAM_COLUMNS` and :data:`QUANTITY_COLUMNS`, plain Python scalars (−1 or NaN where not drawn).
    """
    if target not in ALL_CLASSES:
        raise ValueError(f"target = {target!r}: must be one of {ALL_CLASSES}")
    param_ss, noise_ss = image_seed_sequence(seed, index).spawn(2)
    rng = np.random.default_rng(param_ss)
    r = ranges
    p = {name: -1 if name in INT_COLUMNS else math.nan for name in PARAM_COLUMNS + QUANTITY_COLUMNS}
    p.update(draw_run(seed, index // r.frames_per_run, pixels=pixels, ranges=r))
    hi, lo = noise_ss.generate_state(2, dtype=np.uint32)
    p["noise_seed"] = (int(hi) << 31) | (int(lo) >> 1)
    p["x_rays"] = int(target != "blank")
    p["flux_ph_per_s"] = _log_uniform(rng, *r.flux_ph_per_s)
    p["water_thickness_um"] = float(rng.uniform(*r.water_thickness_um))
    p.update(ice_thickness_um=0.0, has_crystal=0, attempts=0, n_significant=0, n_reflections=0, bragg_photons=0.0,
             background_photons=0.0, ice_contrast=0.0)
    if not p["x_rays"]:
        return scene_from_params(p, pixels, r), p
    crystal_target = target if target in ("weak", "good", "strong") else None
    if target == ICE:
        p["ice_crystallite_nm"] = _log_uniform(rng, *r.ice_crystallite_nm)
        if rng.uniform() < r.ice_crystal_fraction:
            crystal_target = ("weak", "good", "strong")[int(rng.integers(3))]
    scene = scene_from_params(p, pixels, r)
    background = background_photons(scene.background, scene.beam, scene.detector)
    p["background_photons"] = _derived(float(background.mean()))
    table = None
    if crystal_target is not None:
        p["has_crystal"] = 1
        table = _draw_crystal(rng, p, crystal_target, scene, background, pixels, r, cuts)
        n_sig, d_min = count_significant(table, p["n_blocks"])
        p.update(n_significant=n_sig, resolution_A=d_min, n_reflections=len(table["h"]),
                 bragg_photons=_derived(float(table["photons_per_block"].sum()) * p["n_blocks"]))
    if target == ICE:
        # The ice image is proportional to its thickness: solve for the thinnest ice that shows rings.
        transmission = beamstop_transmission(scene.response, scene.detector)
        read = scene.response.readout_noise_adu / scene.response.adu_per_photon
        unit = sample_photons(Sample("ice", thickness_mm=1e-3, crystallite_nm=p["ice_crystallite_nm"]),
                              scene.beam, scene.detector)
        other = background
        if table is not None:
            other = background + _bragg_image(scene_from_params(p, pixels, r))
        t_min = _ice_thickness_for(unit, other, read, transmission, cuts.ice_contrast)
        lo_t, hi_t = max(r.ice_thickness_um[0], t_min), r.ice_thickness_um[1]
        p["ice_thickness_um"] = _derived(_log_uniform(rng, lo_t, hi_t) if lo_t < hi_t else hi_t)
        p["ice_contrast"] = _derived(ice_ring_contrast(p["ice_thickness_um"] * unit, other, read, transmission))
    return scene_from_params(p, pixels, r), p


def _bragg_image(scene: Scene) -> np.ndarray:
    return bragg_fast(scene.crystal, scene.beam, scene.detector).astype(np.float64)


def _ice_thickness_for(unit, other, read, transmission, contrast) -> float:
    """Thinnest ice (µm) whose ring contrast reaches ``contrast``, given the ice image per µm ``unit``."""
    ice, other = unit * transmission, other * transmission
    top = float(ice.max())
    if top <= 0:
        return math.inf
    ring = ice >= ICE_RING_LEVEL * top
    a, b = float(np.mean(ice[ring])), float(np.mean(other[ring])) + read * read
    # contrast = a·t / √(a·t + b): a quadratic in t.
    c2 = contrast * contrast
    return (c2 + math.sqrt(c2 * c2 + 4.0 * c2 * b)) / (2.0 * a)


def _draw_crystal(rng, p, target, scene, background, pixels, r: Ranges, cuts: Cuts) -> dict:
    """Draw a crystal of class ``target`` into ``p`` and return its reflection table."""
    lo_n, hi_n = cuts.interval(target)
    size_lo, size_hi = r.crystal_size_um
    for attempt in range(1, MAX_ATTEMPTS + 1):
        form = int(rng.integers(len(CRYSTAL_FORMS)))
        cell = CRYSTAL_FORMS[form].cell
        rotation = random_rotation(rng)
        domain = _log_uniform(rng, *r.domain_size_um)
        p.update(crystal_form=form, cell_a_A=cell[0], cell_b_A=cell[1], cell_c_A=cell[2], cell_alpha_deg=cell[3],
                 cell_beta_deg=cell[4], cell_gamma_deg=cell[5], domain_size_um=domain,
                 mosaic_spread_deg=_log_uniform(rng, *r.mosaic_spread_deg),
                 b_factor_A2=float(rng.uniform(*r.b_factor_A2)), structure_seed=int(rng.integers(2**62)),
                 attempts=attempt, n_blocks=1.0)
        for axis, edge in zip("abc", cell[:3]):
            p[f"cells_{axis}"] = max(2, round(domain * 1e4 / edge))
        for i in range(3):
            for j in range(3):
                p[f"r{i}{j}"] = float(rotation[i, j])
        crystal = scene_from_params(p, pixels, r).crystal
        block_volume_um3 = float(np.prod(crystal.cells_abc)) * crystal.volume_A3 * 1e-12
        table = reflection_table(dataclasses.replace(scene, crystal=crystal), background,
                                 min_i_over_sigma=cuts.min_i_over_sigma)
        t = np.sort(table["threshold_blocks"])
        # n_significant(n_blocks) = #{t ≤ n_blocks}: it lies in [lo, hi) for n_blocks in [t[lo−1], t[hi−1]).
        need_lo = t[lo_n - 1] if 0 < lo_n <= len(t) else (0.0 if lo_n == 0 else math.inf)
        need_hi = t[int(hi_n) - 1] if hi_n != math.inf and hi_n <= len(t) else math.inf
        blocks_lo = max(need_lo, size_lo ** 3 / block_volume_um3)
        blocks_hi = min(need_hi, size_hi ** 3 / block_volume_um3)
        if blocks_lo < blocks_hi or attempt == MAX_ATTEMPTS:
            if blocks_lo < blocks_hi:
                blocks = _log_uniform(rng, blocks_lo, blocks_hi)
            else:  # nothing reaches the interval: keep the size nearest to it
                blocks = size_lo ** 3 / block_volume_um3 if need_hi <= size_lo ** 3 / block_volume_um3 \
                    else size_hi ** 3 / block_volume_um3
            p["n_blocks"] = _derived(blocks)
            p["crystal_size_um"] = _derived(float(np.cbrt(p["n_blocks"] * block_volume_um3)))
            return table
    raise AssertionError("unreachable")



# ---------------------------------------------------------------------------------------------------------
# The build: configuration, class and split assignment, shards, assembly
# ---------------------------------------------------------------------------------------------------------

#: Identifies the file layout; a file of another format is never taken for a cached build.
FORMAT = "diffranb-dataset/1"
#: Compression of every frame: HDF5's byte shuffle, then deflate at this level (universally readable;
#: noise-limited frames compress about 2×, and level 1 is as good as 6 at a third of the time).
DEFLATE_LEVEL = 1
#: Largest number of frames one task simulates (and one shard file holds).
MAX_SHARD = 256

#: Monotone map from ADU to the 8-bit grey levels the classifiers see (DiffraNet's PNGs were 8-bit):
#: g = round(255·√(clip((ADU − ADU_ZERO) / (ADU_FULL − ADU_ZERO), 0, 1))). ADU_ZERO is the ADC offset (a pixel
#: without photons); the square root spreads counting noise evenly over the grey levels, and ADU_FULL puts
#: the water ring of a bright shot around mid-grey while Bragg spots saturate.
ADU_ZERO = 40
ADU_FULL = 1040


def _make_lut():
    x = np.clip((np.arange(65536, dtype=np.float64) - ADU_ZERO) / (ADU_FULL - ADU_ZERO), 0.0, 1.0)
    lut = np.rint(255.0 * np.sqrt(x)).astype(np.uint8)
    lut.setflags(write=False)
    return lut


_LUT = _make_lut()


def to_8bit(adu) -> np.ndarray:
    """The 8-bit image a classifier sees, from raw ADU (see :data:`ADU_ZERO`, :data:`ADU_FULL`).

    Parameters
    ----------
    adu : array of uint16, ADU

    Returns
    -------
    array of uint8, same shape

    Examples
    --------
    >>> to_8bit(np.array([0, 40, 290, 1040, 65535], dtype=np.uint16)).tolist()
    [0, 0, 128, 255, 255]
    """
    adu = np.asarray(adu)
    if adu.dtype != np.uint16:
        raise ValueError(f"adu.dtype = {adu.dtype}: must be uint16 (raw detector frames)")
    return _LUT[adu]


def default_shares(classes) -> dict:
    """The default class shares: DiffraNet's test set, scaled by 1 − :data:`DEFAULT_ICE_SHARE` with ice."""
    if ICE in classes:
        shares = {c: s * (1.0 - DEFAULT_ICE_SHARE) for c, s in DIFFRANET_SHARES.items()}
        return shares | {ICE: DEFAULT_ICE_SHARE}
    return dict(DIFFRANET_SHARES)


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines a data set, byte for byte (with the diffranb version).

    Attributes
    ----------
    n_images : int
    seed : int
        Root of every draw (:class:`numpy.random.SeedSequence`).
    classes : tuple of str
        :data:`CLASSES`, optionally with ``"ice"``.
    shares : tuple of float
        Target share of each class, in ``classes`` order, summing to 1.
    pixels : int
        Detector edge, pixels (512 as in DiffraNet; smaller for tests).
    cuts : Cuts
    ranges : Ranges
    """

    n_images: int
    seed: int = 0
    classes: tuple = CLASSES
    shares: tuple = ()
    pixels: int = 512
    cuts: Cuts = field(default_factory=Cuts)
    ranges: Ranges = field(default_factory=Ranges)

    def __post_init__(self):
        if isinstance(self.n_images, bool) or not isinstance(self.n_images, (int, np.integer)) or self.n_images < 1:
            raise ValueError(f"n_images = {self.n_images!r}: must be a whole number ≥ 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed = {self.seed!r}: must be a whole number in [0, 2**63)")
        if isinstance(self.classes, str):
            raise ValueError(f"classes = {self.classes!r}: must be a sequence of class names")
        unknown = [c for c in self.classes if c not in ALL_CLASSES]
        if unknown:
            raise ValueError(f"classes: unknown class {unknown[0]!r}; the classes are {', '.join(ALL_CLASSES)}")
        missing = [c for c in CLASSES if c not in self.classes]
        if missing or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes = {tuple(self.classes)!r}: must be the five DiffraNet classes {CLASSES}, "
                             f"optionally with {ICE!r}, each once")
        object.__setattr__(self, "classes", tuple(c for c in ALL_CLASSES if c in self.classes))
        shares = self.shares
        if isinstance(shares, dict):
            extra = sorted(set(shares) - set(self.classes))
            if extra:
                raise ValueError(f"shares: {extra[0]!r} is not one of the classes {self.classes}")
            shares = tuple(float(shares.get(c, 0.0)) for c in self.classes)
        elif not shares:
            shares = tuple(default_shares(self.classes)[c] for c in self.classes)
        shares = tuple(float(s) for s in shares)
        if len(shares) != len(self.classes) or not all(math.isfinite(s) and s >= 0 for s in shares) \
                or sum(shares) <= 0:
            raise ValueError(f"shares = {self.shares!r}: need one share ≥ 0 per class, not all zero")
        total = sum(shares)
        object.__setattr__(self, "shares", tuple(s / total for s in shares))
        if isinstance(self.pixels, bool) or not isinstance(self.pixels, (int, np.integer)) \
                or not 16 <= self.pixels <= 4096:
            raise ValueError(f"pixels = {self.pixels!r}: must be a whole number in [16, 4096]")
        object.__setattr__(self, "n_images", int(self.n_images))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "pixels", int(self.pixels))

    def to_json(self) -> str:
        """A canonical JSON text of the configuration (what a cached file is compared by)."""
        d = dataclasses.asdict(self)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BuildConfig:
        d = json.loads(text)
        ranges = Ranges(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("ranges").items()})
        return cls(**(d | {"classes": tuple(d["classes"]), "shares": tuple(d["shares"]), "cuts": Cuts(**d["cuts"]),
                           "ranges": ranges}))


def _largest_remainder(total: int, shares) -> np.ndarray:
    """Whole counts summing to ``total`` in proportion to ``shares`` (Hamilton's method, ties by order)."""
    ideal = total * np.asarray(shares, dtype=np.float64)
    counts = np.floor(ideal).astype(np.int64)
    order = np.argsort(-(ideal - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def assign(config: BuildConfig) -> tuple[np.ndarray, np.ndarray]:
    """Target class and split of every image, from the seed alone.

    Class counts follow ``config.shares`` exactly (largest remainder); split counts follow
    :data:`SPLIT_SHARES` exactly, and within every class to the nearest image (a controlled rounding of the
    class × split table), so that each split has the same class shares. Both are shuffled with the seed's
    assignment stream.

    Returns
    -------
    targets : (n,) uint8
        Label codes (indices into :data:`ALL_CLASSES`).
    split : (n,) uint8
        Indices into :data:`SPLITS`.
    """
    n = config.n_images
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_ASSIGN_KEY,)))
    class_counts = _largest_remainder(n, config.shares)
    codes = np.array([ALL_CLASSES.index(c) for c in config.classes], dtype=np.uint8)
    targets = rng.permutation(np.repeat(codes, class_counts))
    split_counts = _largest_remainder(n, SPLIT_SHARES)
    ideal = np.outer(class_counts, SPLIT_SHARES)
    table = np.floor(ideal).astype(np.int64)
    row_left = class_counts - table.sum(1)
    col_left = split_counts - table.sum(0)
    for flat in np.argsort(-(ideal - table), axis=None, kind="stable"):
        r, c = divmod(int(flat), len(SPLITS))
        if row_left[r] > 0 and col_left[c] > 0 and ideal[r, c] > table[r, c]:  # whole cells stay as they are
            table[r, c] += 1
            row_left[r] -= 1
            col_left[c] -= 1
    _complete_rounding(table, ideal, row_left, col_left)
    split = np.empty(n, dtype=np.uint8)
    for r, code in enumerate(codes):
        members = np.flatnonzero(targets == code)
        split[members] = rng.permutation(np.repeat(np.arange(len(SPLITS), dtype=np.uint8), table[r]))
    return targets, split


def _complete_rounding(table, ideal, row_left, col_left) -> None:
    """Finish a controlled rounding of ``ideal`` that the greedy pass left short, in place.

    Every cell with a fractional part may be rounded up by one at most; whole cells stay. When a row still
    lacks a unit whose columns are all full, an augmenting path moves units: up in this row at a column c₁,
    down in a row r₁ that was rounded up at c₁, up in r₁ at c₂, …, until a column with a unit left. Row and
    column sums then stay exact. A 2-D table always has such a rounding (Cox, J. Am. Stat. Assoc. 82,
    520–524, 1987). Cells the greedy pass rounded are only moved when it fell short, so tables it could
    round come out unchanged.
    """
    n_rows, n_cols = table.shape
    floor = np.floor(ideal)
    while row_left.max(initial=0) > 0:
        start = int(np.flatnonzero(row_left > 0)[0])
        up = (table == floor) & (ideal > floor)  # cells that can still be rounded up
        came_from = {("r", start): None}
        queue, end = [("r", start)], None
        while queue and end is None:
            kind, i = queue.pop(0)
            if kind == "r":
                for c in range(n_cols):
                    if up[i, c] and ("c", c) not in came_from:
                        came_from[("c", c)] = ("r", i)
                        if col_left[c] > 0:
                            end = ("c", c)
                            break
                        queue.append(("c", c))
            else:
                for r in range(n_rows):
                    if table[r, i] > floor[r, i] and ("r", r) not in came_from:
                        came_from[("r", r)] = ("c", i)
                        queue.append(("r", r))
        if end is None:
            raise RuntimeError("controlled rounding: no augmenting path (the table's margins disagree)")
        node = end
        while came_from[node] is not None:
            prev = came_from[node]
            if node[0] == "c":  # row prev → column node: round this cell up
                table[prev[1], node[1]] += 1
            else:  # column prev → row node: give this cell's unit back
                table[node[1], prev[1]] -= 1
            node = prev
        row_left[start] -= 1
        col_left[end[1]] -= 1
    if col_left.any():
        raise RuntimeError("controlled rounding: columns left short (the table's margins disagree)")


def shard_bounds(n_images: int, shard_size: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) of every shard: at most :data:`MAX_SHARD` frames, at least 16 shards when possible.

    The size depends on the number of images only, never on the workers, so that a resumed build finds
    the shards of the interrupted one.
    """
    size = shard_size or max(1, min(MAX_SHARD, math.ceil(n_images / 16)))
    return [(a, min(a + size, n_images)) for a in range(0, n_images, size)]


def _encode(frame: np.ndarray) -> bytes:
    """One frame as an HDF5 chunk: byte-shuffled (HDF5's shuffle filter for 2-byte items), then deflated."""
    data = np.ascontiguousarray(frame, dtype="<u2").view(np.uint8).reshape(-1, 2).T.tobytes()
    return zlib.compress(data, DEFLATE_LEVEL)


def simulate_shard(config_json: str, start: int, stop: int, targets: np.ndarray) -> dict:
    """Simulate images ``start``…``stop − 1`` (the task a Dask worker runs).

    Parameters
    ----------
    config_json : str
        :meth:`BuildConfig.to_json`.
    start, stop : int
    targets : (stop − start,) uint8
        Target label codes.

    Returns
    -------
    dict
        ``start``, ``stop``; ``chunks`` (list of bytes, HDF5-encoded frames); ``digests`` ((n, 32) uint8,
        SHA-256 of each frame's little-endian bytes); ``columns`` (name → (n,) array of
        :data:`PARAM_COLUMNS` and :data:`QUANTITY_COLUMNS`).
    """
    from .sim.scene import render

    config = BuildConfig.from_json(config_json)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # one core per task: the cluster supplies the parallelism
    try:
        n = stop - start
        chunks, digests = [], np.empty((n, 32), dtype=np.uint8)
        columns = {name: np.empty(n, dtype=np.int64 if name in INT_COLUMNS else np.float64)
                   for name in PARAM_COLUMNS + QUANTITY_COLUMNS}
        for k, index in enumerate(range(start, stop)):
            scene, p = draw_frame(config.seed, index, ALL_CLASSES[int(targets[k])], pixels=config.pixels,
                                  ranges=config.ranges, cuts=config.cuts)
            frame = render(scene, seed=p["noise_seed"])
            digests[k] = np.frombuffer(hashlib.sha256(np.ascontiguousarray(frame, dtype="<u2").tobytes()).digest(),
                                       dtype=np.uint8)
            chunks.append(_encode(frame))
            for name, column in columns.items():
                column[k] = p[name]
    finally:
        numba.set_num_threads(threads)
    return {"start": start, "stop": stop, "chunks": chunks, "digests": digests, "columns": columns}


def _shard_path(parts: Path, start: int, stop: int) -> Path:
    return parts / f"shard_{start:08d}_{stop:08d}.npz"


def _write_shard(parts: Path, result: dict) -> None:
    """Write one task's result atomically: a temporary file, flushed to disk, then renamed into place."""
    chunks = result["chunks"]
    offsets = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
    arrays = {"chunk_data": np.frombuffer(b"".join(chunks), dtype=np.uint8), "chunk_offsets": offsets,
              "digests": result["digests"]}
    arrays |= {f"col_{name}": col for name, col in result["columns"].items()}
    final = _shard_path(parts, result["start"], result["stop"])
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def _read_shard(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        data, offsets = z["chunk_data"], z["chunk_offsets"]
        chunks = [data[offsets[k]:offsets[k + 1]].tobytes() for k in range(len(offsets) - 1)]
        columns = {name[4:]: z[name] for name in z.files if name.startswith("col_")}
        return {"chunks": chunks, "digests": z["digests"], "columns": columns}


def build(n_images: int, seed: int, out, *, classes=CLASSES, shares=None, pixels: int = 512, workers: int = 2,
          scheduler=None, cuts: Cuts | None = None, ranges: Ranges | None = None, shard_size: int | None = None,
          progress: bool = True) -> Path:
    """Build the data set into an HDF5 file, or return it if it is already there.

    Frames are simulated in shards of up to :data:`MAX_SHARD` on a Dask cluster; each finished shard is
    written next to ``out`` (in ``<out>.parts/``) atomically, and when all are there the client assembles
    ``out``, again through a temporary file and a rename. Interrupting a build at any point (even with
    ``kill -9``) and running it again finishes the remaining shards and yields the same file, byte for byte,
    as an uninterrupted build; so does any number of workers.

    Parameters
    ----------
    n_images : int
        ≥ 1 (DiffraNet: 25,000).
    seed : int
        Root of every draw.
    out : str or os.PathLike
        The HDF5 file to write. Its directory must exist and be writable.
    classes : sequence of str
        :data:`CLASSES`, optionally with ``"ice"``.
    shares : dict or sequence of float, optional
        Target share per class (normalised); default :func:`default_shares`.
    pixels : int
        Detector edge, pixels.
    workers : int
        Processes of the local Dask cluster started when ``scheduler`` is None; 0 runs in this process,
        without Dask.
    scheduler : str or distributed.Client, optional
        An existing cluster: a scheduler address (``"tcp://host:8786"``) or a connected client. Its workers
        need the same diffranb installed; only the client touches the file system.
    cuts, ranges : Cuts, Ranges, optional
        Class cuts and parameter ranges (defaults: :class:`Cuts`, :class:`Ranges`).
    shard_size : int, optional
        Frames per task (default from :func:`shard_bounds`).
    progress : bool
        Show a progress bar (on stderr).

    Returns
    -------
    pathlib.Path
        ``out``; read it with :func:`open_dataset`.

    Notes
    -----
    The local cluster's workers are new processes that import the caller's main module: in a script, call
    ``build`` under ``if __name__ == "__main__":``. Frames are identical on any machine that runs the same
    diffranb with the same NumPy, numba and SciPy builds on the same kind of CPU; across CPU types, JIT-compiled
    floating point may differ in the last bit, which the content hash would show.

    Raises
    ------
    ValueError
        Bad parameters, an unwritable directory, or an existing file (or partial build) made with other
        parameters: nothing is overwritten.
    """
    config = BuildConfig(n_images=n_images, seed=seed, classes=tuple(classes) if not isinstance(classes, str)
                         else classes, shares=shares or (), pixels=pixels, cuts=cuts or Cuts(),
                         ranges=ranges or Ranges())
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers = {workers!r}: must be a whole number ≥ 0")
    out = Path(out)
    if not out.parent.is_dir():
        raise ValueError(f"out = {str(out)!r}: directory {str(out.parent)!r} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ValueError(f"out = {str(out)!r}: directory {str(out.parent)!r} is not writable")
    parts = out.with_name(out.name + ".parts")
    if out.exists():
        _check_existing(out, config)
        if parts.exists():
            shutil.rmtree(parts)
        return out
    bounds = shard_bounds(config.n_images, shard_size)
    manifest = {"format": FORMAT, "diffranb_version": _version(), "config": json.loads(config.to_json()),
                "shards": bounds, "derived_digits": DERIVED_DIGITS}
    _claim_parts(parts, manifest)
    for stale in parts.glob("*.tmp-*"):
        stale.unlink()
    targets, split = assign(config)
    todo = [(a, b) for a, b in bounds if not _shard_path(parts, a, b).exists()]
    if todo:
        _run_shards(config, targets, parts, todo, workers, scheduler, progress)
    _assemble(out, parts, config, bounds, targets, split)
    shutil.rmtree(parts)
    return out


def _version() -> str:
    from . import __version__

    return __version__


def _claim_parts(parts: Path, manifest: dict) -> None:
    """Create ``parts`` with its manifest, or check that the partial build there is this one."""
    path = parts / "manifest.json"
    text = json.dumps(manifest, sort_keys=True, indent=1)
    if parts.exists():
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ValueError(f"{str(parts)!r} exists but holds no readable manifest.json: remove it to rebuild") \
                from None
        if found != json.loads(text):
            raise ValueError(f"{str(parts)!r} holds a partial build with other parameters "
                             f"({_differences(found, manifest)}): remove it, or build with the same parameters")
        return
    parts.mkdir()
    tmp = parts / "manifest.json.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


def _differences(found: dict, wanted: dict) -> str:
    a, b = _flatten(found), _flatten(wanted)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} asked" for k in keys[:4]) or "unknown"


def _flatten(d, prefix=""):
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat |= _flatten(v, f"{prefix}{k}.")
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _check_existing(out: Path, config: BuildConfig) -> None:
    import h5py

    try:
        with h5py.File(out, "r") as f:
            fmt, version, text = f.attrs.get("format"), f.attrs.get("diffranb_version"), f.attrs.get("build_config")
    except OSError:
        raise ValueError(f"out = {str(out)!r} exists and is not an HDF5 file: refusing to overwrite it") from None
    if fmt != FORMAT or text is None:
        raise ValueError(f"out = {str(out)!r} exists and is not a diffranb data set: refusing to overwrite it")
    found = {"diffranb_version": version, "config": json.loads(text)}
    wanted = {"diffranb_version": _version(), "config": json.loads(config.to_json())}
    if found != wanted:
        raise ValueError(f"out = {str(out)!r} exists, built with other parameters ({_differences(found, wanted)}): "
                         "remove it or choose another path")
    with h5py.File(out, "r") as f:
        derived = np.concatenate([f["params"][name][:] for name in DERIVED_COLUMNS])
    derived = derived[np.isfinite(derived)]
    if not all(x == _derived(float(x)) for x in derived):
        raise ValueError(f"out = {str(out)!r} was built by an earlier diffranb, which did not round the quantities "
                         f"a frame derives to {DERIVED_DIGITS} digits (its frames are the same, its content hash is "
                         "not): remove it to rebuild")


def _run_shards(config, targets, parts, todo, workers, scheduler, progress) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(b - a for a, b in todo), unit="img", desc="simulating", disable=not progress,
               smoothing=0.05)
    text = config.to_json()
    try:
        if scheduler is None and workers == 0:
            for a, b in todo:
                _write_shard(parts, simulate_shard(text, a, b, targets[a:b]))
                bar.update(b - a)
            return
        with _connect(scheduler, workers) as client:
            from distributed import as_completed

            futures = [client.submit(simulate_shard, text, a, b, targets[a:b], pure=False) for a, b in todo]
            for future in as_completed(futures):
                result = future.result()
                future.release()
                _write_shard(parts, result)
                bar.update(result["stop"] - result["start"])
    finally:
        bar.close()


class _connect:
    """A Dask client: to ``scheduler`` (an address or a client, left open) or to a new local cluster."""

    def __init__(self, scheduler, workers):
        self.scheduler, self.workers = scheduler, workers
        self.owned = []

    def __enter__(self):
        import logging

        from distributed import Client, LocalCluster

        if isinstance(self.scheduler, Client):
            return self.scheduler
        if self.scheduler is not None:
            client = Client(self.scheduler)
            self.owned = [client]
            return client
        if self.workers < 1:
            raise ValueError(f"workers = {self.workers}: a local cluster needs at least one")
        import dask

        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=64 KiB, which also freezes glibc's mmap threshold at
        # 128 KiB: every frame-sized array is then mapped and unmapped afresh, and page faults double the run
        # time. Frame-sized blocks are kept in the heap instead (the largest mmap threshold glibc accepts).
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
        environ["MALLOC_TRIM_THRESHOLD_"] = 256 * 2**20
        environ["MALLOC_MMAP_THRESHOLD_"] = 32 * 2**20
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            # No dashboard, and the scheduler's HTTP endpoint on a free port rather than 8787, which another
            # cluster on the machine may hold.
            cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, scheduler_kwargs={"dashboard_address": ":0"},
                                   silence_logs=logging.ERROR)
        client = Client(cluster)
        self.owned = [client, cluster]
        return client

    def __exit__(self, *exc):
        for thing in self.owned:
            thing.close()
        return False


def _assemble(out: Path, parts: Path, config: BuildConfig, bounds, targets, split) -> None:
    """Write ``out`` from the shards: frame chunks copied as they are, then labels, columns and the hash."""
    import h5py

    n, px = config.n_images, config.pixels
    tmp = out.with_name(out.name + ".assembling")
    tmp.unlink(missing_ok=True)
    columns = {name: np.empty(n, dtype=np.int64 if name in INT_COLUMNS else np.float64)
               for name in PARAM_COLUMNS + QUANTITY_COLUMNS}
    digests = np.empty((n, 32), dtype=np.uint8)
    with h5py.File(tmp, "w", libver=("earliest", "v110"), track_order=False) as f:
        images = f.create_dataset("images", shape=(n, px, px), dtype="<u2", chunks=(1, px, px), shuffle=True,
                                  compression="gzip", compression_opts=DEFLATE_LEVEL, track_times=False)
        images.attrs["unit"] = "ADU"
        for a, b in bounds:
            shard = _read_shard(_shard_path(parts, a, b))
            for k, chunk in enumerate(shard["chunks"]):
                images.id.write_direct_chunk((a + k, 0, 0), chunk)
            digests[a:b] = shard["digests"]
            for name, column in columns.items():
                column[a:b] = shard["columns"][name]
        labels = label_codes(columns["x_rays"], columns["n_significant"], columns["ice_contrast"], cuts=config.cuts,
                             ice=ICE in config.classes)
        f.create_dataset("labels", data=labels, track_times=False)
        f.create_dataset("targets", data=targets, track_times=False)
        f.create_dataset("split", data=split, track_times=False)
        f.create_dataset("image_sha256", data=digests, track_times=False)
        group = f.create_group("params", track_order=False)
        for name in PARAM_COLUMNS + QUANTITY_COLUMNS:
            group.create_dataset(name, data=columns[name], track_times=False)
        attrs = {"format": FORMAT, "diffranb_version": _version(), "seed": config.seed, "n_images": n,
                 "classes": json.dumps(config.classes), "label_names": json.dumps(ALL_CLASSES),
                 "split_names": json.dumps(SPLITS), "build_config": config.to_json(),
                 "crystal_forms": json.dumps([dataclasses.asdict(c) for c in CRYSTAL_FORMS]),
                 "eight_bit_mapping": f"round(255*sqrt(clip((ADU-{ADU_ZERO})/{ADU_FULL - ADU_ZERO}, 0, 1)))",
                 "content_sha256": content_hash(digests, labels, targets, split, columns)}
        for key, value in attrs.items():
            f.attrs[key] = value
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, out)


def content_hash(digests, labels, targets, split, columns) -> str:
    """SHA-256 of a data set's content: every frame's SHA-256 in order, then labels, targets, split and the
    columns by name (little-endian bytes). Independent of compression and of the file's layout."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
    for array in (labels, targets, split):
        h.update(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    for name in sorted(columns):
        column = np.asarray(columns[name])
        h.update(name.encode())
        h.update(np.ascontiguousarray(column, dtype=column.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Reading, re-cutting, exporting
# ---------------------------------------------------------------------------------------------------------

class Dataset:
    """A built data set, read lazily: frames are read from disk only when asked for.

    Use as a context manager (``with open_dataset(path) as ds: ...``) or call :meth:`close`.

    Attributes
    ----------
    path : pathlib.Path
    config : BuildConfig
    images : h5py.Dataset, (n, M, N) uint16, ADU
        The raw frames; indexing it reads only what is indexed.
    labels, targets, split : (n,) uint8
        Label and target codes (indices into :data:`ALL_CLASSES`) and split codes (into :data:`SPLITS`).
    classes : tuple of str
        The classes of this set.
    content_sha256 : str
    """

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        self._file = h5py.File(self.path, "r")
        if self._file.attrs.get("format") != FORMAT:
            self._file.close()
            raise ValueError(f"{str(self.path)!r} is not a diffranb data set")
        attrs = self._file.attrs
        self.config = BuildConfig.from_json(attrs["build_config"])
        self.classes = self.config.classes
        self.content_sha256 = str(attrs["content_sha256"])
        self.images = self._file["images"]
        self.labels = self._file["labels"][()]
        self.targets = self._file["targets"][()]
        self.split = self._file["split"][()]

    def __len__(self) -> int:
        return len(self.labels)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        self._file.close()

    def column(self, name: str) -> np.ndarray:
        """One stored column (:data:`PARAM_COLUMNS`, :data:`QUANTITY_COLUMNS`) for every frame."""
        if name not in self._file["params"]:
            raise KeyError(f"{name!r}: the columns are {', '.join(PARAM_COLUMNS + QUANTITY_COLUMNS)}")
        return self._file["params"][name][()]

    def columns(self, names=None) -> dict:
        """Several columns (all by default), as a dict of name → (n,) array."""
        return {name: self.column(name) for name in (names or PARAM_COLUMNS + QUANTITY_COLUMNS)}

    def row(self, index: int) -> dict:
        """The stored parameters of one frame, for :func:`scene_from_params`."""
        return {name: self._file["params"][name][index] for name in PARAM_COLUMNS + QUANTITY_COLUMNS}

    def image(self, index: int) -> np.ndarray:
        """Raw frame ``index``, (M, N) uint16 ADU."""
        return self.images[int(index)]

    def image8(self, index: int) -> np.ndarray:
        """Frame ``index`` as the classifiers see it (:func:`to_8bit`), (M, N) uint8."""
        return to_8bit(self.image(index))

    def indices(self, split: str | None = None, label: str | None = None) -> np.ndarray:
        """Indices of the frames of a split and/or a (realised) label."""
        keep = np.ones(len(self), dtype=bool)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split = {split!r}: must be one of {SPLITS}")
            keep &= self.split == SPLITS.index(split)
        if label is not None:
            if label not in self.classes:
                raise ValueError(f"label = {label!r}: must be one of {self.classes}")
            keep &= self.labels == ALL_CLASSES.index(label)
        return np.flatnonzero(keep)

    def batches(self, indices=None, batch_size: int = 64, *, eight_bit: bool = True):
        """Iterate over frames in batches, reading one batch at a time.

        Yields
        ------
        images : (b, M, N) uint8 (or uint16 ADU with ``eight_bit=False``)
        labels : (b,) uint8
        indices : (b,) int64
        """
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            order = np.argsort(chunk, kind="stable")
            frames = np.empty((len(chunk),) + self.images.shape[1:], dtype=np.uint16)
            frames[order] = read_frames(self.images, chunk[order])
            yield (to_8bit(frames) if eight_bit else frames), self.labels[chunk], chunk

    def label_names(self, codes=None) -> np.ndarray:
        """Class names of label codes (default: this set's labels)."""
        return np.array(ALL_CLASSES, dtype=object)[self.labels if codes is None else np.asarray(codes)]

    def counts(self) -> dict:
        """Frames per split and class: ``{split: {class: count}}``."""
        return {s: {c: int(np.sum((self.split == k) & (self.labels == ALL_CLASSES.index(c)))) for c in self.classes}
                for k, s in enumerate(SPLITS)}

    def verify(self) -> bool:
        """Re-read every frame and check it against its stored SHA-256 and the content hash."""
        digests = self._file["image_sha256"][()]
        for start in range(0, len(self), 256):
            frames = self.images[start:start + 256]
            for k, frame in enumerate(frames):
                got = hashlib.sha256(np.ascontiguousarray(frame, dtype="<u2").tobytes()).digest()
                if got != digests[start + k].tobytes():
                    return False
        return content_hash(digests, self.labels, self.targets, self.split, self.columns()) == self.content_sha256


def read_frames(images, wanted) -> np.ndarray:
    """Frames ``wanted`` (increasing indices, repeats allowed) of an HDF5 dataset of frames, one read per run of
    consecutive indices. h5py reads a list of indices several times slower than that (``diffranb bench read``
    times both).

    Returns
    -------
    (len(wanted), M, N) array of the dataset's dtype
    """
    wanted = np.asarray(wanted)
    if wanted.ndim != 1 or (wanted.size and wanted.dtype.kind not in "iu"):
        raise ValueError(f"frames: a 1-D array of integer indices, not {wanted.dtype} of shape {wanted.shape}")
    wanted = wanted.astype(np.int64)
    if len(wanted) and (wanted[0] < 0 or wanted[-1] >= len(images) or np.any(np.diff(wanted) < 0)):
        raise ValueError(f"frames {wanted.tolist()[:8]}…: must be increasing indices below {len(images)}")
    out = np.empty((len(wanted),) + images.shape[1:], dtype=images.dtype)
    pos = 0
    for run in np.split(wanted, np.flatnonzero(np.diff(wanted) != 1) + 1) if len(wanted) else ():
        images.read_direct(out, np.s_[int(run[0]):int(run[-1]) + 1], np.s_[pos:pos + len(run)])
        pos += len(run)
    return out


def open_dataset(path) -> Dataset:
    """Open a built data set for lazy reading (see :class:`Dataset`)."""
    return Dataset(path)


#: How :class:`IdealCounter` estimates a frame's class (see the class).
IDEAL_METHODS = ("count", "calibrated", "scale")

#: I/σ levels at which the calibrated method counts a frame's measured reflections.
IDEAL_LEVELS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0)


class IdealCounter:
    """The class an integrator that is given every spot's position would give each frame: references for the
    classifiers, which must find the spots themselves.

    The classes are cut on the number of reflections whose *expected* signal has I/σ ≥ k (the noiseless
    truth). A frame shows one noisy realisation: a reflection just above the threshold may measure below it,
    and one below may measure above. The integrator is given where every reflection of the frame's crystal
    falls and the exact background under it (:func:`reflection_table`). It draws the photons in each box,
    Poisson(S + B), and the read-out noise of the box, Normal(0, n_box·σ_read²), and subtracts B:
    I = measured − B. It then estimates the class by one of three methods, from the same draws:

    - ``"count"``: counts the reflections that measure I ≥ k·σ, σ² = max(I, 0) + B + n_box·σ_read², and cuts
      that count at the set's cuts. Near a cut more reflections sit just below the threshold than just above,
      so this count is biased upwards.
    - ``"calibrated"``: counts the reflections that measure I/σ ≥ each of :data:`IDEAL_LEVELS`, and a
      multinomial logistic regression (scikit-learn's, defaults but ``max_iter=5000``, on the standardised
      log(1 + count)) learns the class of a crystal frame from those counts on the training split's crystal
      frames (:meth:`fit`). It is given what the count is given, and learns where to cut instead of using the
      set's cuts on a biased count.
    - ``"scale"``: is also given each reflection's expected signal per mosaic block (the crystal's structure
      factors, orientation and partialities: a full model of the crystal), so only the crystal's volume is
      unknown. It fits that volume to all measured I by weighted least squares (:func:`fit_blocks`) and
      counts the reflections whose threshold volume the fit reaches. An oracle far beyond any classifier:
      it says how precisely one exposure pins the class when everything else is known.

    Every method is *given* more than the pixels: whether the frame had X-rays (blank), whether it had a crystal
    (a frame without one has no reflections to measure), the crystal's reflection positions and backgrounds, and,
    with the ice class, the ice rings' contrast. So blank, no-crystal and ice frames are right by construction,
    the calibrated method cannot call a crystal frame no-crystal (it learns only among crystal frames), and
    the binary accuracy ("diffraction or not") and the five-class accuracy are not comparable with a
    classifier's. Compare on the crystal frames (:func:`diffranb.evaluate.accuracy_among`). It is optimistic in other ways too: it measures photons, not the 8-bit frames the classifiers
    see (clipped at :data:`ADU_ZERO`, saturated at :data:`ADU_FULL`), it ignores the detector's gain pattern
    and point spread, and it knows the background exactly. It draws its own noise (seed ``seed``), with the
    statistics of the frame's, not the frame's own pixels.

    It has the interface of a saved model for :func:`diffranb.evaluate.evaluate_model`.

    Parameters
    ----------
    classes : tuple of str
        The data set's classes.
    cuts : Cuts
        The data set's cuts.
    seed : int
        Seed of the noise draws; frame i draws from ``SeedSequence(seed, spawn_key=(i,))``, the same for
        every method.
    method : str
        One of :data:`IDEAL_METHODS`.
    """

    dataset_hash = None

    def __init__(self, classes, cuts: Cuts = Cuts(), seed: int = 0, method: str = "count"):
        if method not in IDEAL_METHODS:
            raise ValueError(f"method = {method!r}: must be one of {IDEAL_METHODS}")
        self.classes, self.cuts, self.seed, self.method = tuple(classes), cuts, int(seed), method
        self.kind = "ideal-counter" if method == "count" else f"ideal-counter ({method})"
        self.classifier = None  # the calibrated method's, once fitted
        self.n_fitted = 0  # frames it was fitted on

    @classmethod
    def for_dataset(cls, ds: Dataset, seed: int = 0, method: str = "count", *, progress: bool = False) -> IdealCounter:
        """The ideal counter of an open data set (its classes and cuts); the calibrated method is fitted on the
        set's training split (with a progress bar if asked)."""
        counter = cls(ds.classes, ds.config.cuts, seed, method)
        return counter.fit(ds, progress=progress) if method == "calibrated" else counter

    def measure(self, row: dict, index: int, *, pixels: int = 512, ranges: Ranges = Ranges()) -> tuple:
        """One measurement of every reflection of frame ``index`` (a crystal frame; its stored parameters
        ``row``, drawn at ``pixels`` with ``ranges``).

        Returns
        -------
        table : dict
            :func:`reflection_table` of the frame.
        signal : (n,) float64, photons
            Expected signal of each reflection, S = photons_per_block · n_blocks.
        intensity : (n,) float64, photons
            Measured I = Poisson(S + B) + read-out noise − B.
        """
        scene = scene_from_params(row, pixels, ranges)
        table = reflection_table(scene, min_i_over_sigma=self.cuts.min_i_over_sigma)
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(int(index),)))
        signal = table["photons_per_block"] * float(row["n_blocks"])
        background, floor = table["background"], table["noise_floor"]
        read_variance = floor - background
        intensity = rng.poisson(signal + background) + rng.normal(size=signal.shape) * np.sqrt(read_variance) \
            - background
        return table, signal, intensity

    def level_counts(self, row: dict, index: int, *, pixels: int = 512, ranges: Ranges = Ranges(),
                     levels=IDEAL_LEVELS) -> np.ndarray:
        """How many reflections of frame ``index`` measure I/σ ≥ each of ``levels`` (σ² = max(I, 0) + floor);
        zeros without a crystal. (len(levels),) int64."""
        if not row["has_crystal"]:
            return np.zeros(len(levels), dtype=np.int64)
        table, _, intensity = self.measure(row, index, pixels=pixels, ranges=ranges)
        z = intensity / np.sqrt(np.maximum(intensity, 0.0) + table["noise_floor"])
        return np.count_nonzero(z[:, None] >= np.asarray(levels, dtype=np.float64)[None, :], axis=0)

    def measured_count(self, row: dict, index: int, *, pixels: int = 512, ranges: Ranges = Ranges()) -> int:
        """The count or scale method's estimate of how many reflections of frame ``index`` (its stored
        parameters ``row``, drawn at ``pixels`` with ``ranges``) reach I/σ ≥ k; 0 without a crystal."""
        if self.method == "calibrated":
            raise ValueError("measured_count: the calibrated method estimates a class, not a count")
        if not row["has_crystal"]:
            return 0
        if self.method == "count":
            return int(self.level_counts(row, index, pixels=pixels, ranges=ranges,
                                         levels=(self.cuts.min_i_over_sigma,))[0])
        table, _, intensity = self.measure(row, index, pixels=pixels, ranges=ranges)
        blocks = fit_blocks(table["photons_per_block"], intensity, table["noise_floor"])
        return int(np.count_nonzero(table["threshold_blocks"] <= blocks))

    def _level_matrix(self, ds: Dataset, indices, columns, progress: bool, desc: str) -> np.ndarray:
        from tqdm.auto import tqdm

        out = np.zeros((len(indices), len(IDEAL_LEVELS)), dtype=np.int64)
        for n, i in enumerate(tqdm(indices, desc=desc, unit="img", disable=not progress)):
            out[n] = self.level_counts({name: columns[name][i] for name in columns}, i, pixels=ds.config.pixels,
                                       ranges=ds.config.ranges)
        return out

    def fit(self, ds: Dataset, indices=None, *, progress: bool = False) -> IdealCounter:
        """Fit the calibrated method's classifier on the crystal frames among ``indices`` (default: the
        training split) that do not carry the ice label. Returns ``self``."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if self.method != "calibrated":
            raise ValueError(f"fit: the {self.method} method learns nothing")
        indices = ds.indices("train") if indices is None else np.asarray(indices, dtype=np.int64)
        columns = ds.columns()
        keep = indices[(columns["x_rays"][indices] == 1) & (columns["has_crystal"][indices] == 1)
                       & (ds.labels[indices] != ALL_CLASSES.index(ICE))]
        if len(np.unique(ds.labels[keep])) < 2:
            raise ValueError(f"fit: the {len(keep)} crystal frames hold fewer than two classes")
        x = np.log1p(self._level_matrix(ds, keep, columns, progress, "calibrating"))
        self.n_fitted = len(keep)
        self.classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x, ds.labels[keep])
        return self

    def predict_dataset(self, ds: Dataset, indices, *, progress: bool = False) -> np.ndarray:
        """Label codes of frames ``indices`` of an open data set, (n,) int64."""
        from tqdm.auto import tqdm

        indices = np.asarray(indices, dtype=np.int64)
        columns = ds.columns()
        ice = ICE in self.classes
        if self.method == "calibrated":
            if self.classifier is None:
                raise ValueError("predict_dataset: the calibrated method must be fitted first (fit)")
            codes = self.classifier.predict(np.log1p(self._level_matrix(ds, indices, columns, progress, self.kind)))
            codes = np.where(columns["has_crystal"][indices] == 0, ALL_CLASSES.index("no-crystal"), codes)
            codes = np.where(columns["x_rays"][indices] == 0, ALL_CLASSES.index("blank"), codes)
            if ice:
                codes = np.where(np.asarray(columns["ice_contrast"][indices]) >= self.cuts.ice_contrast,
                                 ALL_CLASSES.index(ICE), codes)
            return codes.astype(np.int64)
        counts = np.zeros(len(indices), dtype=np.int64)
        for n, i in enumerate(tqdm(indices, desc=self.kind, unit="img", disable=not progress)):
            counts[n] = self.measured_count({name: columns[name][i] for name in columns}, i,
                                            pixels=ds.config.pixels, ranges=ds.config.ranges)
        codes = label_codes(columns["x_rays"][indices], counts, columns["ice_contrast"][indices], cuts=self.cuts,
                            ice=ice)
        return codes.astype(np.int64)


def significance_threshold(noise_floor, k: float = 3.0) -> np.ndarray:
    """S*: the expected signal (photons) at which a reflection with box variance ``noise_floor`` + S reaches
    S/σ = k, S* = (k² + √(k⁴ + 4k²·floor))/2 (see :func:`reflection_table`)."""
    k2 = float(k) ** 2
    return 0.5 * (k2 + np.sqrt(k2 * k2 + 4.0 * k2 * np.asarray(noise_floor, dtype=np.float64)))


def fit_blocks(photons_per_block, intensity, noise_floor, *, max_iterations: int = 100,
               rtol: float = 1e-10) -> float:
    """The crystal volume (mosaic blocks) that best explains measured reflection intensities.

    Model: I_i = n·p_i + noise of variance n·p_i + floor_i. Weighted least squares with weights
    1/(n·p_i + floor_i), iterated from the unweighted fit until n changes by less than ``rtol``; n ≥ 0.

    Parameters
    ----------
    photons_per_block, intensity, noise_floor : (n,) arrays
        p (photons per block), measured I (photons, background subtracted), floor (photons², > 0).

    Returns
    -------
    float, blocks; 0 when no reflection has signal.
    """
    p = np.asarray(photons_per_block, dtype=np.float64)
    i = np.asarray(intensity, dtype=np.float64)
    floor = np.asarray(noise_floor, dtype=np.float64)
    if np.any(floor <= 0):
        raise ValueError("fit_blocks: every noise floor must be > 0 (background and read-out noise)")
    pp = float(np.dot(p, p))
    if pp <= 0:
        return 0.0
    n = max(float(np.dot(p, i)) / pp, 0.0)
    for _ in range(max_iterations):
        w = 1.0 / (n * p + floor)
        new = max(float(np.sum(w * p * i) / np.sum(w * p * p)), 0.0)
        done = abs(new - n) <= rtol * max(new, n, 1e-300)
        n = new
        if done:
            break
    return n


def relabel(ds: Dataset, cuts: Cuts) -> np.ndarray:
    """Label codes under other cuts, from the stored quantities: no frame is simulated again.

    Only the cut values change; the parameters were drawn for the cuts the set was built with, so shares
    move when the cuts do.
    """
    return label_codes(ds.column("x_rays"), ds.column("n_significant"), ds.column("ice_contrast"), cuts=cuts,
                       ice=ICE in ds.classes)


def export_png(path, directory, *, progress: bool = True) -> int:
    """Write every frame as an 8-bit PNG in DiffraNet's layout, ``directory/split/class/NNNNNN.png``.

    Parameters
    ----------
    path : str or os.PathLike
        A built data set.
    directory : str or os.PathLike
        Created if missing; must be empty otherwise (nothing is overwritten).
    progress : bool

    Returns
    -------
    int
        Images written.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ValueError(f"png directory {str(directory)!r} exists and is not empty: refusing to overwrite")
    with open_dataset(path) as ds:
        for s in SPLITS:
            for c in ds.classes:
                (directory / s / c).mkdir(parents=True, exist_ok=True)
        names = ds.label_names()
        with tqdm(total=len(ds), unit="img", desc="exporting", disable=not progress) as bar:
            for images, _, indices in ds.batches(batch_size=64):
                for image, index in zip(images, indices):
                    target = directory / SPLITS[ds.split[index]] / names[index] / f"{index:06d}.png"
                    Image.fromarray(image).save(target, format="PNG")
                bar.update(len(indices))
        return len(ds)


def summary(ds: Dataset) -> dict:
    """Split sizes, class counts and realised versus target shares of a data set."""
    n = len(ds)
    return {"n_images": n, "splits": {s: int(np.sum(ds.split == k)) for k, s in enumerate(SPLITS)},
            "counts": ds.counts(),
            "shares": {c: float(np.mean(ds.labels == ALL_CLASSES.index(c))) for c in ds.classes},
            "target_shares": dict(zip(ds.classes, ds.config.shares)),
            "label_matches_target": float(np.mean(ds.labels == ds.targets))}
