"""Detector response: expected photons per pixel in, a raw uint16 frame in ADU out.

The chain, in the order the physics happens (:func:`detect`): the beamstop and its holder shadow the
detector; X-ray photons arrive as Poisson counts; a fibre-optic taper spreads each photon's light over
neighbouring pixels (phosphor CCDs) or not at all (pixel-array detectors); every pixel converts light to
ADU with its own fixed gain; the read-out adds Gaussian noise on an ADC offset; the converter rounds and
saturates; a few hot pixels always read full scale and a few dead ones read zero.

The fixed pattern (gain map, hot and dead pixels) depends only on ``pattern_seed`` and the detector's
shape, so it is the same on every image, as on a real detector; everything else is drawn from the
``rng`` handed to :func:`detect`.

References
----------
J. M. Holton, C. Nielsen, K. A. Frankel, "The point-spread function of fiber-coupled area detectors",
J. Synchrotron Rad. 19, 1006–1011 (2012). https://doi.org/10.1107/S0909049512035571
S. M. Gruner, M. W. Tate, E. F. Eikenberry, "Charge-coupled device area x-ray detectors",
Rev. Sci. Instrum. 73, 2815–2842 (2002). https://doi.org/10.1063/1.1488674
P. Kraft et al., "Performance of single-photon-counting PILATUS detector modules",
J. Synchrotron Rad. 16, 368–375 (2009). https://doi.org/10.1107/S0909049509009911
J. M. Holton, K. A. Frankel, "The minimum crystal size needed for a complete diffraction data set",
Acta Cryst. D66, 393–408 (2010). https://doi.org/10.1107/S0907444910007262 (nanoBragg's noise model).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import scipy.fft

from . import _validate as v
from .geometry import Detector

PSF_TYPES = ("fiber", "none")

#: Largest value a uint16 frame can hold, ADU.
UINT16_MAX = 65535


@dataclass(frozen=True)
class DetectorResponse:
    """How a detector turns photons into ADU.

    The defaults describe a fibre-optic-taper phosphor CCD (ADSC / MAR / Rayonix class);
    :func:`pixel_array_response` gives a photon-counting pixel-array detector (PILATUS / EIGER class).

    Attributes
    ----------
    psf : {"fiber", "none"}
        Point-spread function: the fibre-optic form of Holton et al. (2012), or none.
    psf_g_um : float, µm
        The fibre PSF's parameter g, the height above the pixel plane of the equivalent point source
        of light. Holton et al. (2012) measured g ≈ 27 µm on a fibre-coupled CCD
        (FWHM = 2g·√(2^{2/3} − 1) ≈ 1.53 g ≈ 41 µm). On the default 0.172 mm pixels that is g ≈ 0.16 px
        and keeps ≈ 73 % of a photon's signal in its own pixel; on the 0.05–0.1 mm pixels of real CCDs
        the same g is 0.27–0.54 px and spreads the signal further.
    psf_radius_px : int, pixels
        Truncation radius of the PSF kernel. The fibre PSF falls off as r⁻³, and a fraction
        g / √(g² + R²) of the signal lies beyond radius R: ≈ 1 % for the defaults.
    adu_per_photon : float, ADU/photon
        Mean conversion gain (nanoBragg's ``quantum_gain``); 1 for counting detectors.
    gain_rms : float, dimensionless
        Relative rms of the fixed per-pixel gain pattern (nanoBragg's ``calibration_noise``, 3 %).
    readout_noise_adu : float, ADU
        Gaussian read-out noise per pixel (CCDs: a few ADU; counting detectors: 0).
    adc_offset_adu : float, ADU
        Bias added before digitisation so that noise never clips at zero (ADSC: 40).
    saturation_adu : int, ADU
        Largest value the converter reports (≤ 65535, the uint16 frame's limit).
    beamstop_radius_mm : float, mm
        Radius of the beamstop's shadow on the detector, centred on the direct beam; 0 for none.
    beamstop_holder_width_mm : float, mm
        Width of the shadow of the holder arm; 0 for none.
    beamstop_holder_angle_deg : float, degrees
        Direction of the arm, which runs from the beam centre to the detector edge: 0° along +fast,
        90° along +slow (downwards in an image displayed with row 0 at the top).
    hot_pixel_fraction : float, dimensionless
        Fraction of pixels that always read ``saturation_adu``.
    dead_pixel_fraction : float, dimensionless
        Fraction of pixels that always read 0.
    pattern_seed : int
        Seed of the fixed pattern: gain map, hot and dead pixels.
    """

    psf: str = "fiber"  # "fiber" or "none"
    psf_g_um: float = 27.0  # µm
    psf_radius_px: int = 16  # pixels
    adu_per_photon: float = 1.0  # ADU/photon
    gain_rms: float = 0.03  # dimensionless, relative
    readout_noise_adu: float = 3.0  # ADU, rms
    adc_offset_adu: float = 40.0  # ADU
    saturation_adu: int = UINT16_MAX  # ADU
    beamstop_radius_mm: float = 2.0  # mm
    beamstop_holder_width_mm: float = 1.0  # mm
    beamstop_holder_angle_deg: float = 90.0  # degrees from +fast towards +slow
    hot_pixel_fraction: float = 2e-5  # dimensionless
    dead_pixel_fraction: float = 1e-4  # dimensionless
    pattern_seed: int = 123456789  # nanoBragg's default calibration seed

    def __post_init__(self):
        v.one_of(self, "psf", self.psf, PSF_TYPES)
        v.in_range(self, "psf_g_um", self.psf_g_um, 0, 1000)
        if self.psf == "fiber" and self.psf_g_um == 0:
            v.fail(self, "psf_g_um", self.psf_g_um, 'in (0, 1000] when psf = "fiber"')
        v.integer(self, "psf_radius_px", self.psf_radius_px, 0, 256)
        v.in_range(self, "adu_per_photon", self.adu_per_photon, 0, 1000, lo_open=True)
        # 0.15 keeps every gain positive: 1 − 0.15·z stays > 0 out to z ≈ 6.7 σ (≈ 10⁻¹¹ per pixel).
        v.in_range(self, "gain_rms", self.gain_rms, 0, 0.15)
        v.in_range(self, "readout_noise_adu", self.readout_noise_adu, 0, 1000)
        v.integer(self, "saturation_adu", self.saturation_adu, 1, UINT16_MAX)
        v.in_range(self, "adc_offset_adu", self.adc_offset_adu, 0, self.saturation_adu, hi_open=True)
        v.in_range(self, "beamstop_radius_mm", self.beamstop_radius_mm, 0, 1000)
        v.in_range(self, "beamstop_holder_width_mm", self.beamstop_holder_width_mm, 0, 1000)
        v.in_range(self, "beamstop_holder_angle_deg", self.beamstop_holder_angle_deg, -360, 360)
        v.in_range(self, "hot_pixel_fraction", self.hot_pixel_fraction, 0, 0.1)
        v.in_range(self, "dead_pixel_fraction", self.dead_pixel_fraction, 0, 0.1)
        v.integer(self, "pattern_seed", self.pattern_seed, 0, 2**63 - 1)


def ccd_response(**changes) -> DetectorResponse:
    """A fibre-optic-taper phosphor CCD: the :class:`DetectorResponse` defaults, with ``changes`` applied.

    Examples
    --------
    >>> ccd_response(readout_noise_adu=5.0).psf
    'fiber'
    """
    return dataclasses.replace(DetectorResponse(), **changes)


def pixel_array_response(**changes) -> DetectorResponse:
    """A photon-counting pixel-array detector (PILATUS / EIGER class), with ``changes`` applied.

    Each photon is counted in the pixel it hits (no PSF; charge sharing is neglected), there is no
    read-out noise and no offset, one count per photon. The gain pattern is the ≈ 1 % residual of the
    on-board flat-field correction (Kraft et al. 2009).
    """
    preset = dict(psf="none", psf_g_um=0.0, adu_per_photon=1.0, gain_rms=0.01, readout_noise_adu=0.0,
                  adc_offset_adu=0.0, hot_pixel_fraction=1e-5, dead_pixel_fraction=5e-5)
    preset.update(changes)
    return dataclasses.replace(DetectorResponse(), **preset)


class _Pattern(NamedTuple):
    gain: np.ndarray  # (M, N) float32, read-only
    hot: np.ndarray  # (M, N) bool, read-only
    dead: np.ndarray  # (M, N) bool, read-only
    hot_index: np.ndarray  # flat indices of hot pixels
    dead_index: np.ndarray  # flat indices of dead pixels


def fixed_pattern(response: DetectorResponse, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detector's fixed pattern: per-pixel gain, hot and dead pixels.

    Deterministic in ``response.pattern_seed``, the pattern's parameters and ``shape``, and cached, so
    every image of a data set shares it. The gain map is Gaussian, standardised to mean exactly 1 and rms
    exactly ``gain_rms`` (``adu_per_photon`` is the detector-average gain). Exactly
    ``round(fraction · pixels)`` hot and dead pixels are chosen, without overlap.

    Parameters
    ----------
    response : DetectorResponse
    shape : (int, int)
        (n_slow, n_fast).

    Returns
    -------
    gain : (n_slow, n_fast) float32, dimensionless, read-only
    hot : (n_slow, n_fast) bool, read-only
    dead : (n_slow, n_fast) bool, read-only
    """
    p = _pattern(response, shape)
    return p.gain, p.hot, p.dead


def _pattern(response: DetectorResponse, shape) -> _Pattern:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape = {shape!r}: must be (n_slow, n_fast) with both ≥ 1")
    return _pattern_cached(response.gain_rms, response.hot_pixel_fraction, response.dead_pixel_fraction,
                           response.pattern_seed, shape)


@lru_cache(maxsize=8)
def _pattern_cached(gain_rms, hot_fraction, dead_fraction, seed, shape) -> _Pattern:
    # Separate streams, so that changing the defect fractions leaves the gain map alone.
    gain_ss, defect_ss = np.random.SeedSequence(seed).spawn(2)
    z = np.random.default_rng(gain_ss).standard_normal(shape)
    z -= z.mean()
    sd = z.std()
    gain = 1.0 + gain_rms * (z / sd if sd > 0 else z)
    n = shape[0] * shape[1]
    n_hot, n_dead = round(hot_fraction * n), round(dead_fraction * n)
    chosen = np.random.default_rng(defect_ss).choice(n, size=n_hot + n_dead, replace=False)
    hot_index, dead_index = np.sort(chosen[:n_hot]), np.sort(chosen[n_hot:])
    hot = np.zeros(n, dtype=bool)
    hot[hot_index] = True
    dead = np.zeros(n, dtype=bool)
    dead[dead_index] = True
    return _Pattern(*(_frozen(a) for a in (gain.astype(np.float32), hot.reshape(shape), dead.reshape(shape),
                                           hot_index, dead_index)))


def beamstop_transmission(response: DetectorResponse, detector: Detector) -> np.ndarray:
    """Fraction of the beam reaching each pixel past the beamstop and its holder.

    The shadow is a disc of radius ``beamstop_radius_mm`` on the beam centre joined to a strip of width
    ``beamstop_holder_width_mm`` running from the beam centre to the detector edge in the direction
    ``beamstop_holder_angle_deg``. Edge pixels are anti-aliased: a pixel's transmission is the part of it
    outside the shadow, estimated as ``clip(½ + d, 0, 1)`` from the signed distance d (pixels, positive
    outside) of its centre to the shadow's edge; exact for a straight edge parallel to a pixel side.
    Cached per (response, detector).

    Parameters
    ----------
    response : DetectorResponse
    detector : Detector

    Returns
    -------
    (n_slow, n_fast) float32 in [0, 1], read-only
        0 in the shadow, 1 elsewhere.
    """
    return _transmission_cached(response.beamstop_radius_mm, response.beamstop_holder_width_mm,
                                response.beamstop_holder_angle_deg, detector)


@lru_cache(maxsize=8)
def _transmission_cached(radius_mm, width_mm, angle_deg, detector: Detector) -> np.ndarray:
    s0, f0 = detector.beam_center
    ds = (np.arange(detector.n_slow) - s0)[:, None]
    df = (np.arange(detector.n_fast) - f0)[None, :]
    distance = np.full(detector.shape, np.inf)
    if radius_mm > 0:
        distance = np.hypot(ds, df) - radius_mm / detector.pixel_mm
    if width_mm > 0:
        a = math.radians(angle_deg)
        along = ds * math.sin(a) + df * math.cos(a)
        across = np.abs(df * math.sin(a) - ds * math.cos(a)) - 0.5 * width_mm / detector.pixel_mm
        # Signed distance to a half-infinite strip starting at the beam centre.
        outside = np.hypot(np.maximum(-along, 0.0), np.maximum(across, 0.0))
        inside = np.minimum(np.maximum(-along, across), 0.0)
        distance = np.minimum(distance, outside + inside)
    return _frozen(np.clip(0.5 + distance, 0.0, 1.0).astype(np.float32))


def psf_pixel_integral(g, x0, x1, y0, y1):
    """Fraction of the fibre-optic PSF falling on the rectangle [x0, x1] × [y0, y1].

    The PSF of a fibre-coupled detector is the solid angle a pixel subtends at a point source of light a
    height g above the pixel plane, per 2π (Holton et al. 2012):

        PSF(x, y) = g / (2π (g² + x² + y²)^{3/2}),

    which integrates to 1 over the plane. Its exact antiderivative is

        F(x, y) = atan(x·y / (g·√(g² + x² + y²))) / (2π),

    and the rectangle's share is F(x1, y1) − F(x0, y1) − F(x1, y0) + F(x0, y0).

    Parameters
    ----------
    g : float, any length unit (> 0)
    x0, x1, y0, y1 : float or array_like, same unit as g
        Rectangle edges, broadcast together.

    Returns
    -------
    float64 or ndarray of float64, dimensionless

    References
    ----------
    J. M. Holton, C. Nielsen, K. A. Frankel, J. Synchrotron Rad. 19, 1006–1011 (2012).
    https://doi.org/10.1107/S0909049512035571

    Examples
    --------
    >>> round(float(psf_pixel_integral(1.0, -1e9, 1e9, -1e9, 1e9)), 6)
    1.0
    """
    def antiderivative(x, y):
        return np.arctan(x * y / (g * np.sqrt(g * g + x * x + y * y))) / (2.0 * np.pi)

    x0, x1, y0, y1 = (np.asarray(a, dtype=np.float64) for a in (x0, x1, y0, y1))
    return antiderivative(x1, y1) - antiderivative(x0, y1) - antiderivative(x1, y0) + antiderivative(x0, y0)


def psf_kernel(g_px: float, radius_px: float) -> np.ndarray:
    """The fibre-optic PSF integrated over each pixel, truncated and normalised.

    Pixels whose centres lie farther than ``radius_px`` from the central pixel's centre are dropped and the
    rest rescaled to sum to 1. The r⁻³ tail beyond R holds a fraction g / √(g² + R²) of the signal, spread
    so thinly (over ~πR² pixels) that it is far below the read-out and counting noise of any one pixel;
    renormalising puts it back near the impact point, so that the convolution conserves photons and every
    spot keeps its integrated intensity.

    Parameters
    ----------
    g_px : float, pixels (> 0)
        The PSF parameter g in units of the pixel pitch.
    radius_px : float, pixels (≥ 0)

    Returns
    -------
    (2K + 1, 2K + 1) float64, K = floor(radius_px), read-only
        Sums to 1; entry [K, K] is the pixel the photon hit, first axis slow, second fast.

    References
    ----------
    J. M. Holton, C. Nielsen, K. A. Frankel, J. Synchrotron Rad. 19, 1006–1011 (2012).
    https://doi.org/10.1107/S0909049512035571
    """
    g_px, radius_px = float(g_px), float(radius_px)
    if not (math.isfinite(g_px) and g_px > 0):
        raise ValueError(f"g_px = {g_px!r}: must be a finite number > 0")
    if not (math.isfinite(radius_px) and 0 <= radius_px <= 256):
        raise ValueError(f"radius_px = {radius_px!r}: must be in [0, 256]")
    return _kernel_cached(g_px, radius_px)


@lru_cache(maxsize=8)
def _kernel_cached(g_px, radius_px) -> np.ndarray:
    k = int(math.floor(radius_px))
    c = np.arange(-k, k + 1, dtype=np.float64)
    y, x = c[:, None], c[None, :]
    kernel = psf_pixel_integral(g_px, x - 0.5, x + 0.5, y - 0.5, y + 0.5)
    kernel[x * x + y * y > radius_px * radius_px] = 0.0
    return _frozen(kernel / kernel.sum())


def apply_psf(image, g_px: float, radius_px: float = 16) -> np.ndarray:
    """Spread an image with the fibre-optic PSF (:func:`psf_kernel`).

    A linear (zero-padded) convolution by FFT in single precision, with the kernel's transform cached
    per (g, radius, padded shape). Signal spread beyond the image's edges is lost, as light leaving a
    detector's active area is; away from the edges the total is conserved.

    Parameters
    ----------
    image : (M, N) array_like, counts or photons
    g_px : float, pixels (> 0)
    radius_px : float, pixels (≥ 0)

    Returns
    -------
    (M, N) float32
        Same units as ``image``; round-off ≈ 10⁻⁷ of the image's maximum.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image.shape = {image.shape}: must be 2-D (n_slow, n_fast)")
    kernel = psf_kernel(g_px, radius_px)
    k = kernel.shape[0] // 2
    # A circular convolution over ≥ n + k samples never wraps a neighbour's signal into the image, and
    # ≥ 2k + 1 keeps the kernel from overlapping its own periodic copies.
    padded = tuple(scipy.fft.next_fast_len(max(n + k, 2 * k + 1), real=True) for n in image.shape)
    spectrum = scipy.fft.rfft2(image, s=padded)
    spectrum *= _kernel_spectrum(float(g_px), float(radius_px), padded)
    return scipy.fft.irfft2(spectrum, s=padded)[: image.shape[0], : image.shape[1]]


@lru_cache(maxsize=8)
def _kernel_spectrum(g_px, radius_px, padded) -> np.ndarray:
    kernel = psf_kernel(g_px, radius_px)
    k = kernel.shape[0] // 2
    wrapped = np.zeros(padded, dtype=np.float32)
    wrapped[: kernel.shape[0], : kernel.shape[1]] = kernel
    return _frozen(scipy.fft.rfft2(np.roll(wrapped, (-k, -k), axis=(0, 1))))


def detect(photons, response: DetectorResponse, detector: Detector, rng: np.random.Generator) -> np.ndarray:
    """Record expected photons as a raw detector frame.

    In physical order: expected photons × beamstop transmission → Poisson counts → point spread (fibre
    PSF) → × gain map × ``adu_per_photon`` → + ADC offset + Gaussian read-out noise → round, clip to
    [0, ``saturation_adu``] → hot pixels at saturation, dead pixels at 0.

    Parameters
    ----------
    photons : (n_slow, n_fast) array_like of float, photons
        Expected (noiseless) photons per pixel, ≥ 0.
    response : DetectorResponse
    detector : Detector
        Supplies the shape, pixel pitch (to convert ``psf_g_um`` and the beamstop to pixels) and beam
        centre.
    rng : numpy.random.Generator
        Source of the Poisson and read-out noise; the fixed pattern comes from ``response.pattern_seed``.

    Returns
    -------
    (n_slow, n_fast) uint16, ADU

    Raises
    ------
    ValueError
        If ``photons`` has the wrong shape, or is negative or NaN anywhere.

    Examples
    --------
    >>> from diffranb.sim.geometry import Detector
    >>> det = Detector(n_slow=4, n_fast=4)
    >>> frame = detect(np.zeros(det.shape), pixel_array_response(beamstop_radius_mm=0.0,
    ...                hot_pixel_fraction=0.0, dead_pixel_fraction=0.0), det, np.random.default_rng(0))
    >>> frame.dtype, int(frame.max())
    (dtype('uint16'), 0)
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng = {rng!r}: must be a numpy.random.Generator")
    photons = np.asarray(photons)
    if photons.shape != detector.shape:
        raise ValueError(f"photons.shape = {photons.shape}: must be the detector's {detector.shape}")
    if not (photons >= 0).all():
        raise ValueError("photons: must be ≥ 0 and not NaN everywhere")
    counts = rng.poisson(photons * beamstop_transmission(response, detector)).astype(np.float32)
    if response.psf == "fiber":
        counts = apply_psf(counts, response.psf_g_um / (1000.0 * detector.pixel_mm), response.psf_radius_px)
    pattern = _pattern(response, detector.shape)
    adu = counts
    adu *= pattern.gain
    adu *= np.float32(response.adu_per_photon)
    if response.readout_noise_adu > 0:
        noise = rng.standard_normal(detector.shape, dtype=np.float32)
        noise *= np.float32(response.readout_noise_adu)
        adu += noise
    adu += np.float32(response.adc_offset_adu)
    np.rint(adu, out=adu)
    np.clip(adu, 0, response.saturation_adu, out=adu)
    frame = adu.astype(np.uint16)
    frame.flat[pattern.hot_index] = response.saturation_adu
    frame.flat[pattern.dead_index] = 0
    return frame


def _frozen(a: np.ndarray) -> np.ndarray:
    """Mark a cached array read-only, so that no caller can change what later callers receive."""
    a.flags.writeable = False
    return a
