"""Beam and detector geometry: where each pixel is, which scattering vector it sees, its solid angle
and polarisation factor.

Conventions (nanoBragg's MOSFLM frame): the beam travels along +x; the detector's fast axis is +z and its
slow axis −y; the polarisation E-vector is +z. Arrays are indexed ``image[slow, fast]`` and pixel ``i`` has its
centre at coordinate ``i``. A pixel centre sits at ``P = L·x̂ + (f − f_beam)·px·f̂ + (s − s_beam)·px·ŝ``.

References
----------
J. M. Holton, K. A. Frankel, "The minimum crystal size needed for a complete diffraction data set",
Acta Cryst. D66, 393–408 (2010). https://doi.org/10.1107/S0907444910007262 (nanoBragg's model).
R. Kahn et al., "Macromolecular crystallography with synchrotron radiation: photographic data collection
and polarization correction", J. Appl. Cryst. 15, 330–337 (1982). https://doi.org/10.1107/S0021889882012060
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from . import _validate as v
from .constants import BEAM_DIR, DEFAULT_FLUENCE_PH_PER_M2, E_VECTOR, FAST_AXIS, SLOW_AXIS


@dataclass(frozen=True)
class Detector:
    """A flat detector perpendicular to the beam.

    Attributes
    ----------
    n_slow, n_fast : int
        Pixels along the slow and fast axes.
    pixel_mm : float, mm
        Pixel pitch.
    distance_mm : float, mm
        Sample-to-detector distance along the beam.
    beam_center_px : (float, float) or None
        (slow, fast) pixel-centre coordinates where the direct beam hits; ``None`` puts it at
        (n_slow / 2, n_fast / 2), nanoBragg's default.
    oversample : int
        Sub-pixels per pixel edge for the exact model.
    """

    n_slow: int = 512  # pixels
    n_fast: int = 512  # pixels
    pixel_mm: float = 0.172  # mm
    distance_mm: float = 150.0  # mm
    beam_center_px: tuple[float, float] | None = None  # (slow, fast), pixel-centre coordinates
    oversample: int = 1  # sub-pixels per pixel edge

    def __post_init__(self):
        v.integer(self, "n_slow", self.n_slow, 1, 16384)
        v.integer(self, "n_fast", self.n_fast, 1, 16384)
        v.in_range(self, "pixel_mm", self.pixel_mm, 0, 10, lo_open=True)
        v.in_range(self, "distance_mm", self.distance_mm, 0, 1e5, lo_open=True)
        v.integer(self, "oversample", self.oversample, 1, 16)
        if self.beam_center_px is not None:
            bc = self.beam_center_px
            if len(bc) != 2:
                v.fail(self, "beam_center_px", bc, "a (slow, fast) pair")
            s, f = (v.finite(self, "beam_center_px", x) for x in bc)
            if not (-0.5 <= s <= self.n_slow - 0.5 and -0.5 <= f <= self.n_fast - 0.5):
                v.fail(self, "beam_center_px", bc,
                       f"on the detector: slow in [-0.5, {self.n_slow - 0.5}], fast in [-0.5, {self.n_fast - 0.5}]")

    @property
    def beam_center(self) -> tuple[float, float]:
        """(slow, fast) beam centre in pixel-centre coordinates, with the default resolved."""
        if self.beam_center_px is None:
            return (self.n_slow / 2.0, self.n_fast / 2.0)
        return (float(self.beam_center_px[0]), float(self.beam_center_px[1]))

    @property
    def shape(self) -> tuple[int, int]:
        """(n_slow, n_fast)."""
        return (self.n_slow, self.n_fast)


@dataclass(frozen=True)
class Beam:
    """The incident X-ray beam.

    Attributes
    ----------
    wavelength_A : float, Å
        Central wavelength.
    fluence_ph_per_m2 : float or None, photons/m²
        Photons per unit area on the sample. ``None`` takes ``flux · exposure / beamsize²`` when a flux is
        given, else nanoBragg's default 1/r_e² (so that r_e²·Φ = 1).
    flux_ph_per_s : float or None, photons/s
    exposure_s : float, s
    beamsize_mm : float, mm
        Edge of the square beam; also clips amorphous samples to the illuminated volume.
    kahn_polarization : float or None
        Kahn factor K in [0, 1] (0: unpolarised, ~0.9–0.99 at a synchrotron); ``None`` switches the
        polarisation factor off (P = 1).
    divergence_mrad : float, mrad
        Full angular range of incident directions, both axes (nanoBragg's ``-divergence``).
    divergence_steps : int
        Sources per axis across that range (nanoBragg's ``-divsteps``).
    bandpass : float
        Full fractional wavelength range Δλ/λ (nanoBragg's ``-dispersion`` / 100).
    bandpass_steps : int
        Wavelengths across that range (nanoBragg's ``-dispsteps``).
    """

    wavelength_A: float = 1.0  # Å
    fluence_ph_per_m2: float | None = None  # photons/m²
    flux_ph_per_s: float | None = None  # photons/s
    exposure_s: float = 1.0  # s
    beamsize_mm: float = 0.01  # mm
    kahn_polarization: float | None = None  # dimensionless, in [0, 1]
    divergence_mrad: float = 0.0  # mrad, full range
    divergence_steps: int = 1  # sources per axis
    bandpass: float = 0.0  # Δλ/λ, full range
    bandpass_steps: int = 1  # wavelengths

    def __post_init__(self):
        v.in_range(self, "wavelength_A", self.wavelength_A, 0, 20, lo_open=True)
        if self.fluence_ph_per_m2 is not None:
            v.in_range(self, "fluence_ph_per_m2", self.fluence_ph_per_m2, 0, 1e40)
        if self.flux_ph_per_s is not None:
            v.in_range(self, "flux_ph_per_s", self.flux_ph_per_s, 0, 1e25)
        v.in_range(self, "exposure_s", self.exposure_s, 0, 1e6, lo_open=True)
        v.in_range(self, "beamsize_mm", self.beamsize_mm, 0, 100, lo_open=True)
        if self.kahn_polarization is not None:
            v.in_range(self, "kahn_polarization", self.kahn_polarization, 0, 1)
        v.in_range(self, "divergence_mrad", self.divergence_mrad, 0, 100)
        v.integer(self, "divergence_steps", self.divergence_steps, 1, 101)
        v.in_range(self, "bandpass", self.bandpass, 0, 0.5, hi_open=True)
        v.integer(self, "bandpass_steps", self.bandpass_steps, 1, 101)

    @property
    def fluence(self) -> float:
        """Fluence on the sample, photons/m²."""
        if self.fluence_ph_per_m2 is not None:
            return float(self.fluence_ph_per_m2)
        if self.flux_ph_per_s is not None:
            return self.flux_ph_per_s * self.exposure_s / (self.beamsize_mm * 1e-3) ** 2
        return DEFAULT_FLUENCE_PH_PER_M2

    @property
    def photons(self) -> float:
        """Photons through the beam's cross-section during the exposure (fluence · beamsize²)."""
        return self.fluence * (self.beamsize_mm * 1e-3) ** 2

    @property
    def polarization_factor_K(self) -> float:
        """Kahn factor for the kernels, with "off" encoded as NaN."""
        return math.nan if self.kahn_polarization is None else float(self.kahn_polarization)


def beam_sources(beam: Beam):
    """Incident directions, wavelengths and weights that sample divergence and bandpass.

    Like nanoBragg: directions on a square grid of ``divergence_steps²`` angles spanning the full
    divergence range, keeping those inside the inscribed circle; wavelengths evenly spaced over the full
    bandpass. Every source has the same weight and the weights sum to 1.

    Parameters
    ----------
    beam : Beam

    Returns
    -------
    directions : (n, 3) float64
        Unit vectors of propagation.
    wavelengths_A : (n,) float64, Å
    weights : (n,) float64
    """
    div = beam.divergence_mrad * 1e-3
    n = beam.divergence_steps if div > 0 else 1
    offsets = np.linspace(-div / 2, div / 2, n) if n > 1 else np.zeros(1)
    dirs = []
    for a in offsets:  # about the slow axis: tilts towards fast
        for b in offsets:  # about the fast axis: tilts towards slow
            if n > 1 and (a * a + b * b) > (div / 2) ** 2 * (1 + 1e-9):
                continue
            d = np.array([1.0, 0.0, 0.0]) + math.tan(a) * np.array(FAST_AXIS) + math.tan(b) * np.array(SLOW_AXIS)
            dirs.append(d / np.linalg.norm(d))
    m = beam.bandpass_steps if beam.bandpass > 0 else 1
    lam = beam.wavelength_A * (1 + np.linspace(-beam.bandpass / 2, beam.bandpass / 2, m)) if m > 1 else np.array(
        [beam.wavelength_A])
    directions = np.repeat(np.array(dirs), len(lam), axis=0)
    wavelengths = np.tile(lam, len(dirs))
    weights = np.full(len(wavelengths), 1.0 / len(wavelengths))
    return directions, wavelengths, weights


def pixel_positions_mm(detector: Detector, subpixel_offset=(0.0, 0.0)):
    """Lab-frame position of every pixel's (sub-)centre.

    Parameters
    ----------
    detector : Detector
    subpixel_offset : (float, float), pixels
        Offset (slow, fast) from the pixel centre, e.g. ``(½/n − ½, ½/n − ½)`` for the first sub-pixel.

    Returns
    -------
    P : (n_slow, n_fast, 3) float64, mm
    """
    s0, f0 = detector.beam_center
    px = detector.pixel_mm
    s = (np.arange(detector.n_slow) + subpixel_offset[0] - s0) * px
    f = (np.arange(detector.n_fast) + subpixel_offset[1] - f0) * px
    P = np.empty((detector.n_slow, detector.n_fast, 3))
    P[..., 0] = detector.distance_mm
    P[..., 1] = np.asarray(SLOW_AXIS)[1] * s[:, None]
    P[..., 2] = np.asarray(FAST_AXIS)[2] * f[None, :]
    return P


@numba.njit(cache=True, inline="always")
def solid_angle_sr(px, py, pz, pixel_mm, distance_mm):
    """Solid angle of one pixel at position P, with obliquity: Ω = px²/R² · (L/R).

    Parameters
    ----------
    px, py, pz : float, mm
        Pixel position in the lab frame.
    pixel_mm : float, mm
    distance_mm : float, mm
        Distance along the detector normal (the beam, +x).

    Returns
    -------
    float, sr
    """
    r2 = px * px + py * py + pz * pz
    r = math.sqrt(r2)
    return pixel_mm * pixel_mm / r2 * distance_mm / r


@numba.njit(cache=True, inline="always")
def polarization(dx, dy, dz, kahn):
    """Polarisation factor for a unit diffracted direction d, incident beam along +x, E-vector +z.

    P = ½(1 + cos²2θ − K cos 2ψ sin²2θ), ψ the azimuth of d about the beam measured from the E-vector
    plane (Kahn et al. 1982). ``kahn`` NaN means polarisation off: P = 1.

    Parameters
    ----------
    dx, dy, dz : float
        Unit vector of the diffracted ray.
    kahn : float
        Kahn factor K in [0, 1], or NaN.

    Returns
    -------
    float, dimensionless
    """
    if kahn != kahn:
        return 1.0
    cos2t = dx  # incident is +x
    cos2t_sq = cos2t * cos2t
    sin2t_sq = 1.0 - cos2t_sq
    e = dz  # component along E
    b = dy  # component along B = E × beam (its sign does not matter for cos 2ψ)
    perp = e * e + b * b
    cos2psi = (e * e - b * b) / perp if perp > 0.0 else 1.0
    return 0.5 * (1.0 + cos2t_sq - kahn * cos2psi * sin2t_sq)


@numba.njit(cache=True, parallel=True)
def _pixel_factor_map(P, pixel_mm, distance_mm, kahn):
    ns, nf = P.shape[0], P.shape[1]
    out = np.empty((ns, nf))
    for i in numba.prange(ns):
        for j in range(nf):
            x, y, z = P[i, j, 0], P[i, j, 1], P[i, j, 2]
            r = math.sqrt(x * x + y * y + z * z)
            out[i, j] = solid_angle_sr(x, y, z, pixel_mm, distance_mm) * polarization(x / r, y / r, z / r, kahn)
    return out


def pixel_factor(detector: Detector, beam: Beam, subpixel_offset=(0.0, 0.0)):
    """Solid angle times polarisation factor, P·Ω, for every pixel.

    Like nanoBragg, both are taken once per pixel at one sub-pixel position (by default the centre).

    Returns
    -------
    (n_slow, n_fast) float64, sr
    """
    P = pixel_positions_mm(detector, subpixel_offset)
    return _pixel_factor_map(P, detector.pixel_mm, detector.distance_mm, beam.polarization_factor_K)


def scattering_vectors(P, wavelength_A, incident=BEAM_DIR):
    """Scattering vector q = (d − i)/λ for positions P.

    Parameters
    ----------
    P : (..., 3) float, any length unit
    wavelength_A : float, Å
    incident : (3,) float
        Unit vector of the incident beam.

    Returns
    -------
    q : (..., 3) float64, Å⁻¹  (|q| = 2 sinθ/λ)
    """
    d = P / np.linalg.norm(P, axis=-1, keepdims=True)
    return (d - np.asarray(incident)) / wavelength_A


def stol_map(detector: Detector, beam: Beam):
    """sinθ/λ at every pixel centre, Å⁻¹."""
    q = scattering_vectors(pixel_positions_mm(detector), beam.wavelength_A)
    return 0.5 * np.linalg.norm(q, axis=-1)


def two_theta_deg(detector: Detector):
    """Scattering angle 2θ at every pixel centre, degrees."""
    P = pixel_positions_mm(detector)
    return np.degrees(np.arccos(P[..., 0] / np.linalg.norm(P, axis=-1)))


def resolution_at_edge_A(detector: Detector, beam: Beam):
    """d-spacing at the detector corner farthest from the beam, Å: the highest resolution recorded."""
    return 1.0 / (2.0 * float(stol_map(detector, beam).max()))

