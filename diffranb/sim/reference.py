"""Checking the simulator against nanoBragg's own images.

The reference cases live in ``shared/reference/nanobragg/`` beside the project checkout (JSON parameters +
``.npz`` noiseless image). Spots are compared reflection by reflection: every pixel belongs to the reciprocal
lattice point nearest its scattering vector, so a spot's integrated intensity and centroid are sums over the
pixels of one (h, k, l), the same partition for both images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from .crystal import Crystal
from .geometry import Beam, Detector, pixel_positions_mm, scattering_vectors, stol_map

#: Environment variable that points at a reference folder elsewhere.
ENV_VAR = "DIFFRANB_REFERENCE_DIR"


def reference_dir() -> Path | None:
    """The folder of nanoBragg reference cases, or None when it is not there.

    Looks at ``$DIFFRANB_REFERENCE_DIR``, then ``../shared/reference/nanobragg`` next to the checkout that
    holds this package.
    """
    env = os.environ.get(ENV_VAR)
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "reference" / "nanobragg")
    for path in candidates:
        if path.is_dir() and any(path.glob("*.json")):
            return path
    return None


def load_reference(name: str, directory: Path | None = None):
    """Parameters (dict) and noiseless image ((slow, fast) float32 photons) of reference case ``name``."""
    directory = directory or reference_dir()
    if directory is None:
        raise FileNotFoundError("no nanoBragg reference folder: set $DIFFRANB_REFERENCE_DIR or put shared/ beside the checkout")
    params = json.loads((directory / f"{name}.json").read_text())
    with np.load(directory / f"{name}.npz") as data:
        image = data["image"]
    return params, image


def reflection_labels(crystal: Crystal, beam: Beam, detector: Detector) -> np.ndarray:
    """Label each pixel with the reflection nearest its scattering vector (unrotated crystal).

    Returns
    -------
    (n_slow, n_fast) int64
        Labels 1…n, one per distinct (h, k, l).
    """
    q = scattering_vectors(pixel_positions_mm(detector), beam.wavelength_A)
    hkl = np.rint(q @ crystal.real_vectors().T).astype(np.int64)
    _, labels = np.unique(hkl.reshape(-1, 3), axis=0, return_inverse=True)
    return labels.reshape(detector.shape) + 1


def compare_spots(ours: np.ndarray, ref: np.ndarray, labels: np.ndarray, *, min_peak: float = 10.0) -> dict:
    """Spot-by-spot agreement of two images over the stronger half of the reference's spots.

    A spot is a reflection label whose reference peak exceeds ``min_peak`` photons; the stronger half is
    ranked by the reference's integrated intensity.

    Returns
    -------
    dict
        ``n_spots``, ``n_compared``, ``median_rel_diff`` and ``frac_within_15pct`` of integrated intensity,
        ``median_centroid_shift_px``, ``total_ratio`` (ours / ref over the whole image).
    """
    ours = np.asarray(ours, dtype=float)
    ref = np.asarray(ref, dtype=float)
    idx = np.arange(1, labels.max() + 1)
    peak = ndimage.maximum(ref, labels, idx)
    spots = idx[peak > min_peak]
    i_ref = ndimage.sum_labels(ref, labels, spots)
    strong = spots[np.argsort(i_ref)[::-1][: len(spots) // 2]]
    i_ref = ndimage.sum_labels(ref, labels, strong)
    i_ours = ndimage.sum_labels(ours, labels, strong)
    rel = np.abs(i_ours - i_ref) / i_ref
    with np.errstate(invalid="ignore", divide="ignore"):
        c_ref = np.array(ndimage.center_of_mass(ref, labels, strong))
        c_ours = np.array(ndimage.center_of_mass(ours, labels, strong))
    shift = np.linalg.norm(c_ours - c_ref, axis=1)
    shift[~np.isfinite(shift)] = np.inf  # a spot we did not draw at all
    return {
        "n_spots": int(len(spots)),
        "n_compared": int(len(strong)),
        "median_rel_diff": float(np.median(rel)),
        "frac_within_15pct": float(np.mean(rel <= 0.15)),
        "median_centroid_shift_px": float(np.median(shift)),
        "total_ratio": float(ours.sum() / ref.sum()),
    }


def max_relative_error(ours: np.ndarray, ref: np.ndarray, *, above: float = 1.0) -> float:
    """Largest |ours − ref| / ref over the pixels where ref exceeds ``above`` photons."""
    mask = ref > above
    return float(np.max(np.abs(ours[mask].astype(float) - ref[mask]) / ref[mask]))


def spot_centroids(image: np.ndarray, positions, half_window: int) -> np.ndarray:
    """Intensity-weighted centroid of the pixels around each given position.

    The window is the (2·half_window + 1)² pixels centred on the pixel nearest the position. A window that
    would cross the image edge, or holds no positive signal, gives NaN: a clipped window pulls the centroid
    inwards.

    Parameters
    ----------
    image : (M, N) float, photons
        Noiseless or background-subtracted: every pixel in a window is weighted by its value.
    positions : (n, 2) float, pixels
        (slow, fast) pixel-centre coordinates, e.g. from :func:`diffranb.sim.bragg.predict_spots`.
    half_window : int, pixels

    Returns
    -------
    (n, 2) float64, pixels
        (slow, fast) centroids in the same pixel-centre coordinates.

    Examples
    --------
    >>> image = np.zeros((9, 9)); image[4, 4] = image[4, 5] = 1.0
    >>> spot_centroids(image, [(4.2, 4.4)], 2)
    array([[4. , 4.5]])
    """
    image = np.asarray(image, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    half = int(half_window)
    if half < 0:
        raise ValueError(f"half_window = {half_window!r}: must be an integer ≥ 0")
    centre = np.rint(positions).astype(np.int64)
    offsets = np.arange(-half, half + 1)
    out = np.full(positions.shape, np.nan)
    inside = ((centre[:, 0] - half >= 0) & (centre[:, 0] + half < image.shape[0])
              & (centre[:, 1] - half >= 0) & (centre[:, 1] + half < image.shape[1]))
    rows = centre[inside, 0, None] + offsets  # (m, w)
    cols = centre[inside, 1, None] + offsets
    windows = image[rows[:, :, None], cols[:, None, :]]  # (m, w, w)
    total = windows.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        slow = np.einsum("mij,mi->m", windows, rows) / total
        fast = np.einsum("mij,mj->m", windows, cols) / total
    good = total > 0
    out[np.flatnonzero(inside)[good]] = np.column_stack([slow, fast])[good]
    return out


def radial_profile(image: np.ndarray, detector: Detector, beam: Beam, *, n_bins: int = 100,
                   mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean pixel value in rings of equal sinθ/λ about the direct beam.

    Parameters
    ----------
    image : (n_slow, n_fast) float, photons or ADU
    detector, beam : the geometry the image was recorded with
    n_bins : int
        Equal-width rings from 0 to the largest sinθ/λ on the detector.
    mask : (n_slow, n_fast) bool, optional
        Pixels to use (e.g. outside the beamstop's shadow); all by default.

    Returns
    -------
    stol : (m,) float64, Å⁻¹
        Ring centres, only rings holding at least one pixel.
    mean : (m,) float64, the image's unit per pixel
    """
    image = np.asarray(image, dtype=np.float64)
    if image.shape != detector.shape:
        raise ValueError(f"image.shape = {image.shape}: must be the detector's {detector.shape}")
    if int(n_bins) < 1:
        raise ValueError(f"n_bins = {n_bins!r}: must be an integer ≥ 1")
    stol = stol_map(detector, beam)
    use = np.ones(image.shape, bool) if mask is None else np.asarray(mask, bool)
    edges = np.linspace(0.0, float(stol.max()) * (1 + 1e-9), int(n_bins) + 1)
    ring = np.clip(np.digitize(stol[use], edges) - 1, 0, int(n_bins) - 1)
    counts = np.bincount(ring, minlength=int(n_bins))
    sums = np.bincount(ring, weights=image[use], minlength=int(n_bins))
    filled = counts > 0
    centres = 0.5 * (edges[:-1] + edges[1:])
    return centres[filled], sums[filled] / counts[filled]
