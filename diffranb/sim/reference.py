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
from .geometry import Beam, Detector, pixel_positions_mm, scattering_vectors

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
