"""Hand-made image features of DiffraNet's classic approaches: GLCM texture, local binary patterns, SIFT words.

One entry point, :func:`extract`, computes a feature matrix from a batch of 8-bit frames. For a whole data
set, :class:`FeatureStore` extracts every frame once, in chunks and in parallel, and keeps the result on disk
keyed by the set's content hash, the extractor and its parameters. It computes the *widest* variant of each
extractor once (the six Haralick properties at every distance and angle of the search space, every (P, R) of
LBP, the SIFT descriptors of every frame), so that what a tuning trial picks is a column selection or, for
SIFT, one vocabulary per size.

References
----------
R. M. Haralick, K. Shanmugam, I. Dinstein, "Textural features for image classification", IEEE Trans. Syst.
Man Cybern. SMC-3, 610–621 (1973). https://doi.org/10.1109/TSMC.1973.4309314
T. Ojala, M. Pietikäinen, T. Mäenpää, "Multiresolution gray-scale and rotation invariant texture
classification with local binary patterns", IEEE TPAMI 24, 971–987 (2002). https://doi.org/10.1109/TPAMI.2002.1017623
D. G. Lowe, "Distinctive image features from scale-invariant keypoints", IJCV 60, 91–110 (2004).
https://doi.org/10.1023/B:VISI.0000029664.99615.94
G. Csurka et al., "Visual categorization with bags of keypoints", ECCV workshop (2004).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from itertools import product
from pathlib import Path

import numba
import numpy as np

#: Pixel distances and angles (degrees) of the GLCM search space (DiffraNet, Table 7).
GLCM_DISTANCES = (1, 2, 4, 5, 8)
GLCM_ANGLES = (0, 45, 90, 135)
#: The six Haralick properties, in skimage's names and in the order of every GLCM feature vector.
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "ASM", "energy", "correlation")
#: Sampling points and radii (pixels) of the LBP search space.
LBP_POINTS = (4, 8, 16, 24)
LBP_RADII = (1, 2, 3)
#: Vocabulary sizes of the SIFT bag of visual words.
SIFT_WORDS = (10, 25, 50, 100, 250, 500, 1000, 5000)
#: Grey levels of the 8-bit frames the extractors see.
LEVELS = 256
#: Descriptors of training frames the k-means vocabulary is fitted on, at most (a seeded sample).
MAX_VOCABULARY_DESCRIPTORS = 100_000
#: Bumped whenever an extractor's output changes, so that caches built by older code are not reused.
EXTRACTOR_VERSIONS = {"glcm": 1, "lbp": 1, "sift": 1, "spots": 3}
#: DiffraNet's three extractors (the paper's search space).
PAPER_KINDS = ("glcm", "lbp", "sift")
#: Every extractor: the paper's, and the spot statistics of a hit finder.
KINDS = PAPER_KINDS + ("spots",)


# ---------------------------------------------------------------------------------------------------------
# GLCM: grey-level co-occurrence matrices and Haralick's properties
# ---------------------------------------------------------------------------------------------------------

def glcm_offsets(distances, angles) -> np.ndarray:
    """(row, column) pixel offsets of every (distance, angle) pair, distance-major, as skimage rounds them.

    Parameters
    ----------
    distances : sequence of int, pixels
    angles : sequence of float, degrees

    Returns
    -------
    (len(distances) * len(angles), 2) int64
    """
    pairs = []
    for d, a in product(distances, angles):
        theta = math.radians(a)
        # C's round (half away from zero), as skimage's loop; no product here lands on a half
        pairs.append((int(math.copysign(math.floor(abs(math.sin(theta) * d) + 0.5), math.sin(theta))),
                      int(math.copysign(math.floor(abs(math.cos(theta) * d) + 0.5), math.cos(theta)))))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


@numba.njit(cache=True)
def _glcm_counts(image, offsets):
    """Co-occurrence counts (not yet symmetric) of 8-bit ``image`` for each offset: (n_offsets, 256, 256)."""
    rows, cols = image.shape
    counts = np.zeros((offsets.shape[0], LEVELS, LEVELS), dtype=np.int32)
    for p in range(offsets.shape[0]):
        dr, dc = offsets[p, 0], offsets[p, 1]
        for r in range(max(0, -dr), min(rows, rows - dr)):
            for c in range(max(0, -dc), min(cols, cols - dc)):
                counts[p, image[r, c], image[r + dr, c + dc]] += 1
    return counts


@numba.njit(cache=True)
def _glcm_props(counts):
    """The six properties of the symmetric, normalised GLCM of each count matrix: (n_offsets, 6) float64.

    Sums run over integer counts, exactly, and are divided once at the end: the result is the correctly
    rounded value of what skimage computes in floating point.
    """
    n = counts.shape[0]
    out = np.empty((n, 6), dtype=np.float64)
    by_gap = np.zeros(LEVELS, dtype=np.int64)
    for p in range(n):
        total = 0
        s_contrast = 0
        s_dissimilarity = 0
        s_i = 0
        s_ii = 0
        s_ij = 0
        s_sq = 0
        by_gap[:] = 0
        for i in range(LEVELS):
            for j in range(LEVELS):
                c = np.int64(counts[p, i, j]) + np.int64(counts[p, j, i])
                if c == 0:
                    continue
                gap = abs(i - j)
                total += c
                s_contrast += c * gap * gap
                s_dissimilarity += c * gap
                by_gap[gap] += c
                s_i += c * i
                s_ii += c * i * i
                s_ij += c * i * j
                s_sq += c * c
        if total == 0:
            out[p, :] = (0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
            continue
        homogeneity = 0.0
        for gap in range(LEVELS):
            homogeneity += (by_gap[gap] / total) * (1.0 / (1.0 + gap * gap))
        asm = s_sq / (float(total) * float(total))
        variance = total * s_ii - s_i * s_i  # N² σ², exact; the matrix is symmetric, so σ_i = σ_j
        covariance = total * s_ij - s_i * s_i
        out[p, 0] = s_contrast / total
        out[p, 1] = s_dissimilarity / total
        out[p, 2] = homogeneity
        out[p, 3] = asm
        out[p, 4] = math.sqrt(asm)
        out[p, 5] = 1.0 if variance == 0 else covariance / variance
    return out


def glcm_features(image, distances=GLCM_DISTANCES, angles=GLCM_ANGLES) -> np.ndarray:
    """Haralick's six properties of the symmetric, normalised 256-level GLCM at every (distance, angle).

    Equal to ``skimage.feature.graycoprops(graycomatrix(image, distances, np.deg2rad(angles), 256,
    symmetric=True, normed=True), prop)`` for each of :data:`GLCM_PROPS` (to 1e-10; the unit tests guard it)
    and about ten times faster.

    Parameters
    ----------
    image : (M, N) uint8
        At most 2048 × 2048 (the integer sums would overflow beyond).
    distances : sequence of int, pixels
    angles : sequence of float, degrees

    Returns
    -------
    (6 * len(distances) * len(angles),) float64
        Property-major: ``out.reshape(6, len(distances), len(angles))[k]`` is ``graycoprops(..., GLCM_PROPS[k])``.

    Examples
    --------
    >>> img = np.array([[0, 0], [1, 1]], dtype=np.uint8)
    >>> glcm_features(img, distances=[1], angles=[0]).round(3).tolist()  # only (0,0) and (1,1) pairs
    [0.0, 0.0, 1.0, 0.5, 0.707, 1.0]
    """
    image = _check_image(image)
    if image.size > 2048 * 2048:
        raise ValueError(f"image.shape = {image.shape}: at most 2048 × 2048 pixels")
    props = _glcm_props(_glcm_counts(image, glcm_offsets(distances, angles)))
    return np.ascontiguousarray(props.T).reshape(-1)


def glcm_matrix(image, distance: int, angle: float) -> np.ndarray:
    """The symmetric, normalised GLCM of one (distance, angle), (256, 256) float64, for figures."""
    counts = _glcm_counts(_check_image(image), glcm_offsets([distance], [angle]))[0].astype(np.float64)
    counts += counts.T
    return counts / max(counts.sum(), 1.0)


def glcm_columns(distances, angles) -> np.ndarray:
    """Columns of the full GLCM block (every property, :data:`GLCM_DISTANCES` × :data:`GLCM_ANGLES`) that
    hold the features of the given distances and angles, in :func:`glcm_features` order."""
    for d in distances:
        if d not in GLCM_DISTANCES:
            raise ValueError(f"distance = {d!r}: must be one of {GLCM_DISTANCES}")
    for a in angles:
        if a not in GLCM_ANGLES:
            raise ValueError(f"angle = {a!r}: must be one of {GLCM_ANGLES}")
    nd, na = len(GLCM_DISTANCES), len(GLCM_ANGLES)
    return np.array([k * nd * na + GLCM_DISTANCES.index(d) * na + GLCM_ANGLES.index(a)
                     for k in range(len(GLCM_PROPS)) for d in distances for a in angles], dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------
# LBP: rotation-invariant uniform local binary patterns
# ---------------------------------------------------------------------------------------------------------

def lbp_circle(points: int, radius: float) -> np.ndarray:
    """(row, column) offsets of the ``points`` samples on a circle of ``radius`` pixels, rounded to 1e-5
    as skimage does, so that samples on the pixel grid hit it exactly."""
    phi = 2 * np.pi * np.arange(points, dtype=np.float64) / points
    return np.round(np.column_stack([-radius * np.sin(phi), radius * np.cos(phi)]), 5)


@numba.njit(cache=True)
def _lbp_uniform(image, circle):
    """Uniform LBP codes of a float64 image: the number of neighbours ≥ the centre when the pattern has at
    most two 0/1 transitions between consecutive samples (the first and last are not compared, as in
    skimage), else P + 1. Neighbours come from bilinear interpolation with zeros outside the image, in
    skimage's order of operations, so that ties fall the same way.

    The loops run row by row and sample by sample with the columns innermost, over a zero-padded copy:
    ``floor(c + x) = c + floor(x)`` exactly (x has five decimals), so every column of a row reads the same
    relative neighbours, and the interpolation and the bit counting are separate branch-free loops that
    vectorise (six times faster than one loop per pixel).
    """
    rows, cols = image.shape
    points = circle.shape[0]
    m = int(math.ceil(np.abs(circle).max())) + 1
    padded = np.zeros((rows + 2 * m, cols + 2 * m), dtype=np.float64)
    padded[m:m + rows, m:m + cols] = image
    codes = np.empty((rows, cols), dtype=np.uint8)
    ones = np.empty(cols, dtype=np.int32)
    changes = np.empty(cols, dtype=np.int32)
    previous = np.empty(cols, dtype=np.int32)
    bits = np.empty(cols, dtype=np.int32)
    column = np.arange(cols).astype(np.float64)
    for r in range(rows):
        centre = image[r]
        for k in range(points):
            y = r + circle[k, 0]
            r0 = int(math.floor(y)) + m
            r1 = int(math.ceil(y)) + m
            dy = y - math.floor(y)
            x = circle[k, 1]
            c0 = int(math.floor(x))
            c1 = int(math.ceil(x))
            top_left = padded[r0, c0 + m:c0 + m + cols]
            top_right = padded[r0, c1 + m:c1 + m + cols]
            bottom_left = padded[r1, c0 + m:c0 + m + cols]
            bottom_right = padded[r1, c1 + m:c1 + m + cols]
            for c in range(cols):
                dx = (column[c] + x) - (column[c] + c0)
                top = (1 - dx) * top_left[c] + dx * top_right[c]
                bottom = (1 - dx) * bottom_left[c] + dx * bottom_right[c]
                bits[c] = (1 - dy) * top + dy * bottom - centre[c] >= 0
            if k == 0:
                for c in range(cols):
                    ones[c] = bits[c]
                    changes[c] = 0
                    previous[c] = bits[c]
            else:
                for c in range(cols):
                    ones[c] += bits[c]
                    changes[c] += bits[c] != previous[c]
                    previous[c] = bits[c]
        for c in range(cols):
            codes[r, c] = ones[c] if changes[c] <= 2 else points + 1
    return codes


def lbp_image(image, points: int, radius: float) -> np.ndarray:
    """Uniform LBP code of every pixel, equal to ``skimage.feature.local_binary_pattern(image, points,
    radius, "uniform")`` (the unit tests guard it) but as uint8 and about ten times faster.

    Parameters
    ----------
    image : (M, N) uint8
    points : int
        Samples on the circle, P ≤ 254.
    radius : float, pixels

    Returns
    -------
    (M, N) uint8, codes 0 … P + 1
    """
    if not (isinstance(points, (int, np.integer)) and 1 <= points <= 254):
        raise ValueError(f"points = {points!r}: must be a whole number in [1, 254]")
    if not radius > 0:
        raise ValueError(f"radius = {radius!r}: must be > 0")
    return _lbp_uniform(_check_image(image).astype(np.float64), lbp_circle(points, radius))


def lbp_histogram(image, points: int, radius: float) -> np.ndarray:
    """Normalised histogram of :func:`lbp_image`: (P + 2,) float64 summing to 1, whatever the image holds."""
    codes = lbp_image(image, points, radius)
    return np.bincount(codes.ravel(), minlength=points + 2).astype(np.float64) / codes.size


def lbp_columns(points: int, radius: int) -> np.ndarray:
    """Columns of the full LBP block (every (P, R) of :data:`LBP_POINTS` × :data:`LBP_RADII`, in that order)
    holding the histogram of one (P, R)."""
    if points not in LBP_POINTS or radius not in LBP_RADII:
        raise ValueError(f"(points, radius) = ({points!r}, {radius!r}): must be in {LBP_POINTS} × {LBP_RADII}")
    start = 0
    for p, r in product(LBP_POINTS, LBP_RADII):
        if (p, r) == (points, radius):
            return np.arange(start, start + p + 2)
        start += p + 2
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------------
# Spot statistics: what a hit finder counts (beyond DiffraNet's extractors)
# ---------------------------------------------------------------------------------------------------------

#: Local backgrounds the spot statistics are measured against: the median over a window of 5, 7 or 9 pixels
#: (an int, pixels), or the 5 × 5 median taken two or three times over ("5x2", "5x3": the median of the median),
#: which wears a spot down as a wider window does, each pass at about a tenth of a 9 × 9 median's cost
#: (:func:`median_background`).
SPOT_WINDOWS = (5, 7, 9, "5x2", "5x3")
#: The backgrounds before iterated medians were offered (the search records of that time name only these).
PLAIN_SPOT_WINDOWS = (5, 7, 9)
#: Weights of the 3 × 3 sum that measures a spot at each pixel (:func:`spot_sums`). "matched": the outer product
#: of (1, 2, 1), centre 4, edges 2, corners 1, close to the profile of a spot about one pixel wide (spread by the
#: detector's point-spread function and the crystal's mosaicity) wherever in its pixel it is centred: a matched
#: filter, which doubles the significance of a one-pixel spot against the plain sum (4 / √36 against 1 / √9 of
#: its photons per unit noise). "box": all nine alike, the spot statistics of extractor version 2 and the
#: spot input DeepFreak networks were trained on.
SPOT_KERNELS = {"matched": ((1, 2, 1), (2, 4, 2), (1, 2, 1)), "box": ((1, 1, 1), (1, 1, 1), (1, 1, 1))}
#: The kernel of the spot statistics (:func:`spot_features`) since extractor version 3.
SPOT_KERNEL = "matched"
#: Significance levels of a peak's 3 × 3 weighted sum (in units of its annulus's robust noise), log-spaced.
SPOT_LEVELS = (3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 32.0, 40.0, 50.0, 64.0)
#: Levels at which peaks are also counted per radial band (resolution), and the number of bands.
SPOT_BAND_LEVELS = (5.0, 10.0)
SPOT_BANDS = 4
#: Concentric annuli about the frame centre over which the noise of the weighted sums is estimated.
NOISE_ANNULI = 16
SPOT_STATS = ("background median", "background p90", "sum noise median")
#: Fewest unmasked pixels an annulus needs to estimate its own noise; one with fewer borrows its neighbour's.
MIN_NOISE_PIXELS = 64

#: Detector masks (:func:`detector_mask`). A pixel is *hot* when it reads full scale (255) in at least this share
#: of the frames, *dead* when it reads 0 in at least this share of the lit frames.
BAD_PIXEL_SHARE = 0.9
#: A frame is *lit* when its median grey level reaches this: bright enough to show the beamstop's shadow.
LIT_FRAME_LEVEL = 16
#: A pixel of a lit frame is in shadow when its 5 × 5 median is at most this share of the frame's median.
SHADOW_LEVEL = 0.25
#: Pixels in shadow in at least this share of the lit frames are masked (the beamstop and its holder moved
#: from run to run, so this is the union of their shadows), and so are their neighbours within this margin.
SHADOW_SHARE = 0.01
SHADOW_MARGIN_PX = 2
#: Training frames (a seeded sample) a data set's mask is learnt from.
MASK_FRAMES = 400

_ANNULI = {}


def _annuli(shape):
    """Pixel order grouping the frame into :data:`NOISE_ANNULI` rings about its centre, and band indices."""
    if shape not in _ANNULI:
        i, j = np.indices(shape, dtype=np.float64)
        r = np.hypot(i - (shape[0] - 1) / 2.0, j - (shape[1] - 1) / 2.0)
        far = r.max() if r.max() > 0 else 1.0  # a frame of one pixel: r = 0, ring 0
        ring = np.minimum((r / far * NOISE_ANNULI).astype(np.int64), NOISE_ANNULI - 1).ravel()
        order = np.argsort(ring, kind="stable")
        bounds = np.searchsorted(ring[order], np.arange(NOISE_ANNULI + 1))
        band = np.minimum((r / (0.5 * min(shape)) * SPOT_BANDS).astype(np.int64), SPOT_BANDS - 1)
        _ANNULI[shape] = (ring.reshape(shape), order, bounds, band)
    return _ANNULI[shape]


def detector_mask(images) -> np.ndarray:
    """The pixels a hit finder should ignore, learnt from frames of one detector: hot, dead and shadowed.

    As at a beamline, where a mask from calibration frames goes with the detector: *hot* pixels read full
    scale (255) in at least :data:`BAD_PIXEL_SHARE` of the frames, *dead* ones read 0 in that share of the lit
    frames (median ≥ :data:`LIT_FRAME_LEVEL`), and the beamstop and its holder are where lit frames are dark
    (5 × 5 median ≤ :data:`SHADOW_LEVEL` × the frame's median) in at least :data:`SHADOW_SHARE` of them, grown
    by :data:`SHADOW_MARGIN_PX`. Each would otherwise give peaks on every frame: a hot pixel is a 255 among
    its background, and a median over a few pixels does not follow the corner of a shadow. Without lit frames
    only hot pixels are found.

    Parameters
    ----------
    images : (n, M, N) uint8
        Frames of one detector (:func:`diffranb.dataset.to_8bit`), n ≥ 1.

    Returns
    -------
    (M, N) bool
        True where a pixel is masked.
    """
    import cv2

    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"images: {images.dtype} of shape {images.shape}; must be (n ≥ 1, M, N) uint8 frames")
    full = np.zeros(images.shape[1:], dtype=np.int64)
    zero = np.zeros_like(full)
    dark = np.zeros_like(full)
    lit = 0
    for image in images:
        image = np.ascontiguousarray(image)
        full += image == 255
        level = float(np.median(image))
        if level >= LIT_FRAME_LEVEL:
            lit += 1
            zero += image == 0
            dark += cv2.medianBlur(image, 5) <= SHADOW_LEVEL * level
    mask = full >= BAD_PIXEL_SHARE * len(images)
    if lit:
        shadow = (dark >= SHADOW_SHARE * lit).astype(np.uint8)
        size = 2 * SHADOW_MARGIN_PX + 1
        mask |= cv2.dilate(shadow, np.ones((size, size), np.uint8)).astype(bool)
        mask |= zero >= BAD_PIXEL_SHARE * lit
    return mask


def mask_digest(mask) -> str:
    """A short fingerprint of a detector mask (``"none"`` for None), naming cached features computed with it."""
    if mask is None:
        return "none"
    mask = np.asarray(mask, dtype=bool)
    h = hashlib.sha256(repr(mask.shape).encode())
    h.update(np.packbits(mask).tobytes())
    return h.hexdigest()[:16]


def _check_mask(mask, shape):
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != shape:
        raise ValueError(f"mask: {mask.dtype} of shape {mask.shape}; must be bool of the frame's shape {shape}")
    return mask


def _kernel(kernel: str) -> np.ndarray:
    if kernel not in SPOT_KERNELS:
        raise ValueError(f"kernel = {kernel!r}: must be one of {', '.join(SPOT_KERNELS)}")
    return np.array(SPOT_KERNELS[kernel], dtype=np.float32)


@functools.lru_cache(maxsize=None)  # called for every frame
def sum_range(kernel: str) -> int:
    """Bound of the weighted sums (:func:`spot_sums`) of an 8-bit frame's excess over its median: they are
    whole numbers within ± (sum of the weights) × 255."""
    return int(_kernel(kernel).sum()) * (LEVELS - 1)


@functools.lru_cache(maxsize=None)
def min_sum_noise(kernel: str) -> float:
    """Smallest noise of a weighted sum, grey levels: the rounding of its 8-bit pixels, √(Σ w² / 12)."""
    return math.sqrt(float((_kernel(kernel) ** 2).sum()) / 12.0)


def _order_statistics(hist, ks) -> np.ndarray:
    """The ``ks``-th smallest (0-based) of the values counted in each row of ``hist`` (bin i holds value i).

    ``hist`` is (rows, bins) of counts and ``ks`` (rows, m) of ranks, each below its row's total; returns the
    (rows, m) bin indices.
    """
    cumulative = np.cumsum(hist, axis=1)
    return np.stack([(cumulative <= ks[:, [j]]).sum(axis=1) for j in range(ks.shape[1])], axis=1)


def _histogram_median(hist, counts) -> np.ndarray:
    """Twice the median of the whole numbers counted in each row of ``hist``, as ``np.median`` takes it
    (the mean of the two middle values when a row holds an even number), for rows with ``counts`` ≥ 1."""
    ks = np.stack([(counts - 1) // 2, counts // 2], axis=1)
    return _order_statistics(hist, ks).sum(axis=1)


def _grey_percentile(levels, q: int) -> float:
    """``np.percentile(image, q)`` (linear interpolation) of an 8-bit image from its grey-level histogram
    ``levels``, bit for bit: the same order statistics and numpy's own interpolation formula, without sorting
    the image (a quarter of the time of :func:`spot_features` went into those sorts)."""
    n = int(levels.sum())
    if n < 1 or not 0 <= q <= 100:
        raise ValueError(f"{n} grey levels counted, q = {q!r}: need at least one, and 0 ≤ q ≤ 100")
    at = (n - 1) * (q / 100)  # numpy's virtual index of the "linear" method (Hyndman & Fan's 7th)
    below = min(math.floor(at), n - 1)
    t = at - below
    a, b = (int(v) for v in _order_statistics(levels[None, :], np.array([[below, min(below + 1, n - 1)]]))[0])
    # numpy's _lerp: from the lower value below t = ½, from the upper one above, in float64
    return float(b - (b - a) * (1 - t)) if t >= 0.5 else float(a + (b - a) * t)


def _ring_noise(flat, bounds, kept, kernel: str = SPOT_KERNEL) -> np.ndarray:
    """Clipped rms noise of the weighted sums ``flat`` (float32, whole numbers within ±:func:`sum_range`, made
    with ``kernel``, grouped by annulus at ``bounds``; ``kept`` marks the unmasked ones, or None): NaN for an
    annulus with fewer than :data:`MIN_NOISE_PIXELS`.

    Both medians (of the sums, and of their absolute deviations: the MAD) come from one histogram of the
    whole-number sums per annulus: exactly what ``np.median`` gives, in a fraction of its time. The rms of the
    deviations inside the 4σ clip is taken by numpy on the same float32 values in the same order, so the
    noise is bit-identical to :func:`_ring_noise_by_sorting`; the unit tests compare them.
    """
    rings = len(bounds) - 1
    limit, floor = sum_range(kernel), min_sum_noise(kernel)
    width = 2 * limit + 1
    if len(flat) and (flat.min() < -limit or flat.max() > limit):
        raise ValueError(f"weighted sums within [{flat.min()}, {flat.max()}]: the {kernel} sums of an 8-bit frame's "
                         f"excess lie within ±{limit}")
    ring_of = np.repeat(np.arange(rings), np.diff(bounds))
    key = ring_of * width + (flat.astype(np.int64) + limit)
    if kept is not None:
        key = key[kept]
    hist = np.bincount(key, minlength=rings * width).reshape(rings, width)
    counts = hist.sum(axis=1)
    noise = np.full(rings, np.nan)
    known = counts >= MIN_NOISE_PIXELS
    if not known.any():
        return noise
    hist, counts = hist[known], counts[known]
    twice_median = _histogram_median(hist, counts) - 2 * limit  # 2 × median, a whole number
    # |2v − 2·median| for every value v of the histogram: twice the absolute deviation, a whole number
    values = np.arange(width) - limit
    twice_deviation = np.abs(2 * values[None, :] - twice_median[:, None])
    span = 4 * limit + 1
    key = np.arange(len(hist))[:, None] * span + twice_deviation
    deviation_hist = np.bincount(key.ravel(), weights=hist.ravel(), minlength=len(hist) * span)
    deviation_hist = deviation_hist.astype(np.int64).reshape(len(hist), span)
    mad = _histogram_median(deviation_hist, counts) / 4.0
    median = (twice_median / 2.0).astype(np.float32)
    for row, a in enumerate(np.flatnonzero(known)):
        values_a = flat[bounds[a]:bounds[a + 1]]
        if kept is not None:
            values_a = values_a[kept[bounds[a]:bounds[a + 1]]]
        deviation = np.abs(values_a - median[row])
        # the MAD of integer sums moves in steps of 1.48: it only sets a 4σ clip for the standard deviation
        clip = 4.0 * max(1.4826 * float(mad[row]), floor)
        inside = deviation[deviation < clip]
        noise[a] = max(float(np.sqrt(np.mean(inside * inside))), floor)
    return noise


def _ring_noise_by_sorting(flat, bounds, kept, kernel: str = SPOT_KERNEL) -> np.ndarray:
    """:func:`_ring_noise` as first written, two ``np.median`` sorts per annulus: the reference the unit tests
    hold it to, bit for bit, and the baseline ``diffranb bench classic`` times it against."""
    floor = min_sum_noise(kernel)
    noise = np.full(len(bounds) - 1, np.nan)
    for a in range(len(bounds) - 1):
        values = flat[bounds[a]:bounds[a + 1]]
        if kept is not None:
            values = values[kept[bounds[a]:bounds[a + 1]]]
        if len(values) < MIN_NOISE_PIXELS:
            continue
        deviation = np.abs(values - np.median(values))
        clip = 4.0 * max(1.4826 * float(np.median(deviation)), floor)
        inside = deviation[deviation < clip]
        noise[a] = max(float(np.sqrt(np.mean(inside * inside))), floor)
    return noise


def spot_significance(image, window=5, mask=None, kernel: str = SPOT_KERNEL
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Significance of a spot at every pixel: the 3 × 3 weighted sum above a median background, over its noise.

    The background is the frame's median over ``window`` × ``window`` pixels (or a 5 × 5 median taken again,
    :func:`median_background`), which follows water and ice rings but not spots one or two pixels wide. The
    excess is summed over each pixel's 3 × 3 neighbourhood
    with the weights of ``kernel`` (:data:`SPOT_KERNELS`), and the sum is divided by its noise in each of
    :data:`NOISE_ANNULI` rings about the frame centre (the rms deviation from the ring's median, clipped at
    four robust standard deviations so that spots do not count);
    on the square-root grey scale of :func:`diffranb.dataset.to_8bit` counting noise is nearly the same at
    every level, so one noise per ring is enough. Masked pixels (:func:`detector_mask`) read as their
    background, so they add nothing to a sum; their significance is 0 and they do not enter the noise
    (a ring with fewer than :data:`MIN_NOISE_PIXELS` others takes the noise of the nearest ring that has them).

    Parameters
    ----------
    image : (M, N) uint8
    window : int (pixels) or str
        One of :data:`SPOT_WINDOWS` (:func:`median_background`).
    mask : (M, N) bool, optional
        Pixels to ignore.
    kernel : str
        One of :data:`SPOT_KERNELS`.

    Returns
    -------
    z : (M, N) float32
        Significance, dimensionless.
    background : (M, N) uint8
        The median background, grey levels.
    noise : (NOISE_ANNULI,) float64
        Noise of a weighted sum in each ring, grey levels.
    """
    sums, background = spot_sums(image, window, mask, kernel)
    ring, order, bounds, _ = _annuli(sums.shape)
    flat = sums.ravel()[order]
    kept = None if mask is None else ~mask.ravel()[order]
    noise = _fill_noise(_ring_noise(flat, bounds, kept, kernel), kernel)
    z = sums / noise[ring].astype(np.float32)
    if mask is not None:
        z[mask] = 0.0
    return z, background, noise


def _fill_noise(noise, kernel: str) -> np.ndarray:
    """Noise of every ring from :func:`_ring_noise`'s: a ring without enough pixels (NaN) borrows its nearest
    neighbour's, and without any ring, the smallest noise of a sum."""
    known = np.flatnonzero(np.isfinite(noise))
    if len(known) == 0:
        return np.full(len(noise), min_sum_noise(kernel))
    if len(known) < len(noise):  # an annulus (nearly) all masked borrows its nearest neighbour's noise
        nearest = known[np.abs(np.arange(len(noise))[:, None] - known[None, :]).argmin(axis=1)]
        return noise[nearest]
    return noise


def spot_sums(image, window=5, mask=None, kernel: str = SPOT_KERNEL) -> tuple[np.ndarray, np.ndarray]:
    """The 3 × 3 sums, weighted by ``kernel``, of a frame's excess over its ``window`` × ``window`` median, the
    first step of :func:`spot_significance` (which see, for ``mask``): ((M, N) float32 whole numbers within
    ±:func:`sum_range`, (M, N) uint8 background)."""
    import cv2

    image = _check_image(image)
    weights = _kernel(kernel)
    _check_window(window)
    size, passes = window_passes(window)
    background = image
    for _ in range(passes):
        background = cv2.medianBlur(background, size)
    if mask is not None:
        mask = _check_mask(mask, image.shape)
        image = np.where(mask, background, image)
    excess = image.astype(np.float32) - background.astype(np.float32)
    # whole-number weights and sums below 2²⁴: exact in float32. The kernels are symmetric, so OpenCV's
    # correlation is the convolution.
    return cv2.filter2D(excess, -1, weights, borderType=cv2.BORDER_CONSTANT), background


# -- the same statistics in one compiled pass (what spot_features runs) --------------------------------------

@numba.njit(cache=True, nogil=True)
def _window_start(image, hist, near, r, half):
    """Fill ``hist`` with the window of rows ``near`` about column 0 (edges replicated); its median and the
    count of pixels below it."""
    cols = image.shape[1]
    hist[:] = 0
    for row in near:
        for dj in range(-r, r + 1):
            hist[image[row, min(max(dj, 0), cols - 1)]] += 1
    m, below = 0, 0
    while below + hist[m] <= half:
        below += hist[m]
        m += 1
    return m, below


@numba.njit(cache=True, nogil=True)
def _follow_median(hist, m, below, half):
    """Move median ``m`` of ``hist``, with ``below`` pixels under it, to where the median now is."""
    while below > half:
        m -= 1
        below -= hist[m]
    while below + hist[m] <= half:
        below += hist[m]
        m += 1
    return m, below


@numba.njit(cache=True, nogil=True)
def _median_filter(image, window):
    """``cv2.medianBlur(image, window)`` of a 2-D uint8 image (edges replicated), by running histograms of the
    window (Huang's method) that follow its median from pixel to pixel, two rows at a time (their windows share
    all rows but one, read once for both): equal to OpenCV's, pixel for pixel (unit tests), and faster than it
    over 7 × 7 pixels and more, where OpenCV's is ten to twenty times slower than over 5 × 5 (``diffranb bench
    classic``).

    References
    ----------
    T. S. Huang, G. J. Yang, G. Y. Tang, "A fast two-dimensional median filtering algorithm", IEEE Trans.
    Acoust. Speech Signal Process. 27, 13–18 (1979). https://doi.org/10.1109/TASSP.1979.1163188
    """
    rows, cols = image.shape
    r = window // 2
    half = (window * window) // 2  # the median's rank, counted from 0
    out = np.empty_like(image)
    upper, lower = np.zeros(LEVELS, np.int32), np.zeros(LEVELS, np.int32)
    near = np.empty(window + 1, np.int64)  # rows of the upper window, then the lower one's last
    for i in range(0, rows, 2):
        for d in range(window + 1):
            near[d] = min(max(i + d - r, 0), rows - 1)
        two = i + 1 < rows
        m1, b1 = _window_start(image, upper, near[:window], r, half)
        out[i, 0] = m1
        m2, b2 = 0, 0
        if two:
            m2, b2 = _window_start(image, lower, near[1:], r, half)
            out[i + 1, 0] = m2
        top, bottom = near[0], near[window]
        for j in range(1, cols):
            leaving, entering = max(j - r - 1, 0), min(j + r, cols - 1)
            for d in range(1, window):  # the rows both windows hold
                v, w = image[near[d], leaving], image[near[d], entering]
                upper[v] -= 1
                upper[w] += 1
                b1 += (w < m1) - (v < m1)
                lower[v] -= 1
                lower[w] += 1
                b2 += (w < m2) - (v < m2)
            v, w = image[top, leaving], image[top, entering]
            upper[v] -= 1
            upper[w] += 1
            b1 += (w < m1) - (v < m1)
            m1, b1 = _follow_median(upper, m1, b1, half)
            out[i, j] = m1
            if two:
                v, w = image[bottom, leaving], image[bottom, entering]
                lower[v] -= 1
                lower[w] += 1
                b2 += (w < m2) - (v < m2)
                m2, b2 = _follow_median(lower, m2, b2, half)
                out[i + 1, j] = m2
    return out


def median_filter(image, window: int) -> np.ndarray:
    """``cv2.medianBlur(image, window)`` of a 2-D uint8 image, ``window`` odd, edges replicated: Huang's
    running histogram (:func:`_median_filter`), equal to OpenCV's pixel for pixel and faster over 7 × 7 pixels
    and more (``diffranb bench classic``)."""
    image = _check_image(image)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1 or window % 2 == 0:
        raise ValueError(f"window = {window!r}: must be an odd whole number of pixels ≥ 1")
    return _median_filter(image, int(window))


def window_passes(window) -> tuple[int, int]:
    """A spot background as its median window and its number of passes.

    Parameters
    ----------
    window : int (pixels) or str
        One of :data:`SPOT_WINDOWS`.

    Returns
    -------
    (int, int)
        Window edge in pixels, passes: 7 → (7, 1), "5x2" → (5, 2).
    """
    _check_window(window)
    if isinstance(window, str):
        size, _, passes = window.partition("x")
        return int(size), int(passes)
    return int(window), 1


def median_background(image, window) -> np.ndarray:
    """The spot background ``window`` of a uint8 frame (:data:`SPOT_WINDOWS`): its ``window`` × ``window``
    median as OpenCV's ``medianBlur`` gives it (OpenCV's own up to 5 × 5, a sorting network, the fastest;
    :func:`median_filter` above), or for "5x2" and "5x3" the 5 × 5 median taken two or three times, each pass
    over the last one's output. Each pass wears a spot down: one 5 × 5 pass removes a square spot of 3 × 3
    pixels but leaves a plateau of a 4 × 4 one (where a window holds 16 of its pixels, more than half of 25),
    which the second pass removes. Of square spots up to 5 × 5 pixels, two passes leave no more than a 7 × 7
    median and three passes nothing, as a 9 × 9 median does (``tests/unit/test_features.py`` checks these
    cases). A 5 × 5 pass takes about 0.4 ms of a 512² frame, a 9 × 9 median about 4 ms (one core; see
    ``results/classic-spots-fast/``)."""
    return spot_backgrounds(image, (window,))[window]


def spot_backgrounds(image, windows) -> dict:
    """:func:`median_background` of a frame for several backgrounds, each median pass made once.

    An iterated median goes on from the passes of its window already made ("5x3" from "5x2", or from 5), in
    whatever order ``windows`` come.

    Parameters
    ----------
    image : (M, N) uint8
    windows : sequence
        Backgrounds of :data:`SPOT_WINDOWS`.

    Returns
    -------
    dict
        window → (M, N) uint8 background, in the order of ``windows``.
    """
    import cv2

    image = _check_image(image)
    out, passes_of = {}, {}  # passes_of: window in pixels → [image, first pass, second pass, ...]
    for window in windows:
        size, passes = window_passes(window)
        made = passes_of.setdefault(size, [image])
        while len(made) <= passes:
            made.append(cv2.medianBlur(made[-1], size) if size <= 5 else median_filter(made[-1], size))
        out[window] = made[passes]
    return out


@numba.njit(cache=True, nogil=True)
def _block_sum32(a, start, n):
    """numpy's float32 sum of at most 128 values ``a[start:start + n]``: one by one below eight, else in eight
    running sums added pairwise, then the rest one by one."""
    if n < 8:
        res = np.float32(0.0)
        for i in range(start, start + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[start], a[start + 1], a[start + 2], a[start + 3]
    r4, r5, r6, r7 = a[start + 4], a[start + 5], a[start + 6], a[start + 7]
    i = 8
    while i < n - n % 8:
        k = start + i
        r0 += a[k]
        r1 += a[k + 1]
        r2 += a[k + 2]
        r3 += a[k + 3]
        r4 += a[k + 4]
        r5 += a[k + 5]
        r6 += a[k + 6]
        r7 += a[k + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[start + i]
        i += 1
    return res


@numba.njit(cache=True, nogil=True)
def _pairwise_sum32(a, start, n):
    """numpy's float32 ``add.reduce`` of ``a[start:start + n]``, bit for bit: its pairwise summation (a run of
    more than 128 values is split in two at a multiple of eight below its middle, and the sums of the halves
    added; shorter runs by :func:`_block_sum32`), so that a mean taken here equals ``np.mean`` of the same
    float32 values. Walked with a stack of its own: a recursive function compiled by numba cannot be cached."""
    starts, sizes = np.empty(64, np.int64), np.empty(64, np.int64)
    stage = np.zeros(64, np.int64)
    values = np.empty(64, np.float32)
    top, held = 0, 0
    starts[0], sizes[0] = start, n
    while top >= 0:
        s, m = starts[top], sizes[top]
        if m <= 128:
            values[held] = _block_sum32(a, s, m)
            held += 1
            top -= 1
            continue
        half = m // 2
        half -= half % 8
        if stage[top] == 0:  # first the lower half
            stage[top] = 1
            top += 1
            starts[top], sizes[top], stage[top] = s, half, 0
        elif stage[top] == 1:  # then the upper half
            stage[top] = 2
            top += 1
            starts[top], sizes[top], stage[top] = s + half, m - half, 0
        else:  # both done: their sum
            values[held - 2] = values[held - 2] + values[held - 1]
            held -= 1
            top -= 1
    return values[0]


@numba.njit(cache=True, nogil=True)
def _order_statistic(hist, lo, k):
    """Index of the ``k``-th smallest (from 0) value counted in ``hist``, whose first non-zero bin is ≥ ``lo``."""
    b = lo
    seen = hist[b]
    while seen <= k:
        b += 1
        seen += hist[b]
    return b


_RUNS = {}


def _ring_runs(shape):
    """The frame's rows cut into runs of pixels of one annulus (:func:`_annuli`): for row i, runs
    ``first[i]`` to ``first[i + 1]``, each from column ``start`` to ``stop`` (excluded) in annulus ``ring``.
    A compiled pass walks a ring's pixels run by run, in raster order, with the ring's figures at hand."""
    if shape not in _RUNS:
        ring = _annuli(shape)[0]
        first, start, stop, which = [0], [], [], []
        for row in ring:
            cuts = np.flatnonzero(np.diff(row)) + 1
            edges = np.concatenate([[0], cuts, [len(row)]])
            start.extend(edges[:-1])
            stop.extend(edges[1:])
            which.extend(row[edges[:-1]])
            first.append(len(start))
        _RUNS[shape] = tuple(np.asarray(x, dtype=np.int64) for x in (first, start, stop, which))
    return _RUNS[shape]


@numba.njit(cache=True, nogil=True)
def _fused_sums_and_noise(image, background, masked, weights, first, start, stop, which, rings, limit, floor,
                          min_pixels):
    """:func:`spot_sums` as int32 and :func:`_ring_noise` of them, the same numbers bit for bit, in passes
    over the frame in raster order, run by run of one annulus (:func:`_ring_runs`; ``masked``: (M, N) bool, all
    False for no mask). Returns the (M, N) int32 sums, the (rings,) float64 noise (NaN where a ring has fewer
    than ``min_pixels`` unmasked pixels) and the (256,) int64 histogram of the background."""
    rows, cols = image.shape
    excess = np.zeros((rows + 2, cols + 2), np.int32)  # with a border of zeros: OpenCV's BORDER_CONSTANT
    for i in range(rows):
        for j in range(cols):
            excess[i + 1, j + 1] = (np.int32(image[i, j]) - np.int32(background[i, j])) * np.int32(1 - masked[i, j])
    # the background's histogram in four parts, so that equal neighbours do not wait on each other's count
    parts = np.zeros((4, LEVELS), np.int64)
    flat = background.ravel()
    for p in range(len(flat) - len(flat) % 4):
        parts[p % 4, flat[p]] += 1
    for p in range(len(flat) - len(flat) % 4, len(flat)):
        parts[0, flat[p]] += 1
    levels = parts.sum(axis=0)
    w00, w01, w02 = weights[0, 0], weights[0, 1], weights[0, 2]
    w10, w11, w12 = weights[1, 0], weights[1, 1], weights[1, 2]
    w20, w21, w22 = weights[2, 0], weights[2, 1], weights[2, 2]
    width = 2 * limit + 1
    sums = np.empty((rows, cols), np.int32)
    hist = np.zeros((rings, width), np.int32)
    for i in range(rows):
        for j in range(cols):
            sums[i, j] = (w00 * excess[i, j] + w01 * excess[i, j + 1] + w02 * excess[i, j + 2]
                          + w10 * excess[i + 1, j] + w11 * excess[i + 1, j + 1] + w12 * excess[i + 1, j + 2]
                          + w20 * excess[i + 2, j] + w21 * excess[i + 2, j + 1] + w22 * excess[i + 2, j + 2])
        for k in range(first[i], first[i + 1]):
            counted = hist[which[k]]
            for j in range(start[k], stop[k]):
                if not masked[i, j]:
                    counted[sums[i, j] + limit] += 1
    lo, hi = np.zeros(rings, np.int64), np.zeros(rings, np.int64)
    count = np.zeros(rings, np.int64)
    for a in range(rings):
        for b in range(width):
            count[a] += hist[a, b]
        if count[a]:
            while hist[a, lo[a]] == 0:
                lo[a] += 1
            hi[a] = width - 1
            while hist[a, hi[a]] == 0:
                hi[a] -= 1
    noise = np.full(rings, np.nan)
    median = np.zeros(rings, np.float32)
    clip = np.full(rings, -np.inf, np.float32)  # nothing is inside the clip of a ring without a noise
    deviations = np.zeros(4 * limit + 1, np.int64)
    for a in range(rings):
        if count[a] < min_pixels:
            continue
        c = count[a]
        # twice the median (np.median's mean of the middle two), then twice the median absolute deviation
        twice_median = (_order_statistic(hist[a], lo[a], (c - 1) // 2) + _order_statistic(hist[a], lo[a], c // 2)
                        - 2 * limit)
        far = max(abs(2 * (lo[a] - limit) - twice_median), abs(2 * (hi[a] - limit) - twice_median))
        for b in range(lo[a], hi[a] + 1):
            deviations[abs(2 * (b - limit) - twice_median)] += hist[a, b]
        low = 0
        while deviations[low] == 0:
            low += 1
        mad = (_order_statistic(deviations, low, (c - 1) // 2) + _order_statistic(deviations, low, c // 2)) / 4.0
        deviations[:far + 1] = 0
        median[a] = np.float32(twice_median / 2.0)
        clip[a] = np.float32(4.0 * max(1.4826 * mad, floor))  # numpy compares float32 values in float32
        # The squares inside the clip are quarters of whole numbers. While their total stays below 2²² every
        # partial sum is a float32 exactly, so numpy's float32 sum, in whatever order, is the exact total:
        # counted here from the histogram, without going over the pixels again.
        quarters, inside = 0, 0
        for b in range(lo[a], hi[a] + 1):
            if hist[a, b] and abs(np.float32(b - limit) - median[a]) < clip[a]:
                quarters += hist[a, b] * (2 * (b - limit) - twice_median) ** 2
                inside += hist[a, b]
        if quarters < 2 ** 24:
            mean = np.float32((quarters / 4.0) / np.float64(inside))
            noise[a] = max(np.float64(np.sqrt(mean)), floor)
    # otherwise the squared deviations inside the ring's clip, in raster order as numpy has them, summed as it
    # sums them
    offset = np.zeros(rings + 1, np.int64)
    for a in range(rings):
        offset[a + 1] = offset[a] + (count[a] if count[a] >= min_pixels and np.isnan(noise[a]) else 0)
    filled = offset[:-1].copy()
    squares = np.empty(offset[rings], np.float32)
    for i in range(rows):
        for k in range(first[i], first[i + 1]):
            a = which[k]
            if offset[a + 1] == offset[a]:
                continue
            centre, limit32, n = median[a], clip[a], filled[a]
            for j in range(start[k], stop[k]):
                if not masked[i, j]:
                    d = abs(np.float32(sums[i, j]) - centre)
                    if d < limit32:
                        squares[n] = d * d
                        n += 1
            filled[a] = n
    for a in range(rings):
        if offset[a + 1] > offset[a]:
            # np.mean: the float32 sum over the count as a float64 division, rounded to float32
            n = filled[a] - offset[a]
            mean = np.float32(np.float64(_pairwise_sum32(squares, offset[a], n)) / np.float64(n))
            noise[a] = max(np.float64(np.sqrt(mean)), floor)
    return sums, noise, levels


@numba.njit(cache=True, nogil=True)
def _fused_peaks(sums, noise32, ring, band, masked, levels, band_levels, bands):
    """The peak counts of :func:`spot_features` from the weighted sums and each ring's noise (float32):
    (len(levels) + len(band_levels)·bands,) int64. A pixel's significance is its sum over its ring's noise,
    in float32 as numpy divides; only pixels whose sum comes near the lowest level are looked at closely."""
    rows, cols = sums.shape
    counts = np.zeros(len(levels) + len(band_levels) * bands, np.int64)
    lowest = np.float32(levels[0])
    # below 0.99 × lowest × noise, a sum's float32 quotient is surely below the lowest level
    near = np.empty(len(noise32), np.float32)
    for a in range(len(noise32)):
        near[a] = np.float32(0.99) * lowest * noise32[a]
    for i in range(rows):
        for j in range(cols):
            if masked[i, j] or not np.float32(sums[i, j]) >= near[ring[i, j]]:
                continue
            v = np.float32(sums[i, j]) / noise32[ring[i, j]]
            if not v >= lowest:
                continue
            peak = True
            for ii in range(max(i - 1, 0), min(i + 2, rows)):
                for jj in range(max(j - 1, 0), min(j + 2, cols)):
                    if not masked[ii, jj] and np.float32(sums[ii, jj]) / noise32[ring[ii, jj]] > v:
                        peak = False
            if not peak:
                continue
            for k in range(len(levels)):
                if v >= np.float32(levels[k]):
                    counts[k] += 1
            for k in range(len(band_levels)):
                if v >= np.float32(band_levels[k]):
                    counts[len(levels) + k * bands + band[i, j]] += 1
    return counts


_NO_MASK = {}


@functools.lru_cache(maxsize=None)  # called for every frame and window
def _int_kernel(kernel: str) -> np.ndarray:
    """The whole-number weights of ``kernel`` as the compiled pass takes them, (3, 3) int32."""
    return _kernel(kernel).astype(np.int32)


#: The peak levels as arrays, for the compiled pass.
_PEAK_LEVELS, _BAND_LEVELS = np.array(SPOT_LEVELS), np.array(SPOT_BAND_LEVELS)


def _spot_row(counts, levels, noise) -> np.ndarray:
    """A frame's row of :func:`spot_features` from its peak counts, its background's grey-level histogram and
    each ring's noise."""
    stats = [_grey_percentile(levels, 50), _grey_percentile(levels, 90), float(np.median(noise))]
    return np.concatenate([np.log1p(np.asarray(counts, dtype=np.float64)), stats])


def _check_window(window) -> None:
    """Refuse anything but one background of :data:`SPOT_WINDOWS` (True is not 1, nor "5" 5)."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer, str)) or window not in SPOT_WINDOWS:
        raise ValueError(f"window = {window!r}: must be one of {SPOT_WINDOWS}")


def _spot_features_fused(image, window, mask, kernel: str, background=None) -> np.ndarray:
    image = _check_image(image)
    weights = _int_kernel(kernel)
    _check_window(window)
    if mask is None:
        if image.shape not in _NO_MASK:
            _NO_MASK[image.shape] = np.zeros(image.shape, dtype=bool)
        masked = _NO_MASK[image.shape]
    else:
        masked = np.ascontiguousarray(_check_mask(mask, image.shape))
    background = median_background(image, window) if background is None else background
    ring, _, _, band = _annuli(image.shape)
    sums, noise, levels = _fused_sums_and_noise(image, background, masked, weights, *_ring_runs(image.shape),
                                                NOISE_ANNULI, sum_range(kernel), min_sum_noise(kernel),
                                                MIN_NOISE_PIXELS)
    noise = _fill_noise(noise, kernel)
    counts = _fused_peaks(sums, noise.astype(np.float32), ring, band, masked, _PEAK_LEVELS, _BAND_LEVELS,
                          SPOT_BANDS)
    return _spot_row(counts, levels, noise)


def max_3x3(z) -> np.ndarray:
    """Largest value of each pixel's 3 × 3 neighbourhood (OpenCV's grey dilation; edges see only the frame)."""
    import cv2

    return cv2.dilate(z, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)


def spot_features(image, window=5, mask=None, kernel: str = SPOT_KERNEL) -> np.ndarray:
    """Spot statistics of one frame: how many local maxima of :func:`spot_significance` reach each level.

    Columns (:func:`feature_names`): log(1 + count) of 3 × 3 local maxima with z ≥ each of
    :data:`SPOT_LEVELS`; the same at :data:`SPOT_BAND_LEVELS` in each of :data:`SPOT_BANDS` radial bands
    (resolution); and the median and 90th percentile of the background and the median noise of a sum, which
    say how bright the shot was. This is what a hit finder measures; DiffraNet's extractors see texture only.
    ``mask`` (:func:`detector_mask`): pixels to ignore, and ``kernel``, the weights of the sums, as in
    :func:`spot_significance`.

    The statistics are computed in one compiled pass (the weighted sums, each ring's noise and the peaks),
    equal bit for bit to the same steps taken with numpy and OpenCV (:func:`_spot_features_reference`, which
    the unit tests hold it to) and several times faster (``diffranb bench classic``).

    Returns
    -------
    (len(SPOT_LEVELS) + len(SPOT_BAND_LEVELS)·SPOT_BANDS + 3,) float64
    """
    return _spot_features_fused(image, window, mask, kernel)


def spot_block(image, windows, mask=None, kernel: str = SPOT_KERNEL) -> np.ndarray:
    """:func:`spot_features` of several backgrounds side by side, the medians made once
    (:func:`spot_backgrounds`): equal to concatenating :func:`spot_features` of each.

    Parameters
    ----------
    image : (M, N) uint8
    windows : int, str or sequence of them
        One background of :data:`SPOT_WINDOWS` or a set of them (:func:`spot_windows`; taken in the order of
        ``SPOT_WINDOWS``).
    mask : (M, N) bool, optional
        Pixels to ignore (:func:`detector_mask`).
    kernel : str
        One of :data:`SPOT_KERNELS`.

    Returns
    -------
    (25·len(windows),) float64
    """
    image = _check_image(image)
    windows = spot_windows(windows)
    backgrounds = spot_backgrounds(image, windows)
    return np.concatenate([_spot_features_fused(image, w, mask, kernel, backgrounds[w]) for w in windows])


def _spot_features_reference(image, window=5, mask=None, kernel: str = SPOT_KERNEL) -> np.ndarray:
    """:func:`spot_features` as first written, from :func:`spot_significance` with numpy and OpenCV: the
    reference the unit tests hold the compiled pass to, bit for bit, and the baseline ``diffranb bench
    classic`` times it against."""
    z, background, noise = spot_significance(image, window, mask, kernel)
    peak = (z >= max_3x3(z)) & (z >= SPOT_LEVELS[0])
    values = z[peak]
    counts = [np.count_nonzero(values >= level) for level in SPOT_LEVELS]
    band = _annuli(z.shape)[3][peak]
    for level in SPOT_BAND_LEVELS:
        counts.extend(np.bincount(band[values >= level], minlength=SPOT_BANDS))
    return _spot_row(counts, np.bincount(background.ravel(), minlength=LEVELS), noise)


def spot_names() -> list:
    """Column names of :func:`spot_features`."""
    names = [f"peaks z≥{level:g}" for level in SPOT_LEVELS]
    names += [f"peaks z≥{level:g} band {b}" for level in SPOT_BAND_LEVELS for b in range(SPOT_BANDS)]
    return names + list(SPOT_STATS)


def spot_windows(window) -> tuple:
    """``window`` as a tuple of backgrounds in the order of :data:`SPOT_WINDOWS`: one background (a window in
    pixels, or "5x2" / "5x3") or a non-empty set of them (a sequence), whose statistics are put side by side."""
    single = isinstance(window, (int, np.integer, str)) and not isinstance(window, bool)
    windows = (window,) if single else window
    try:
        windows = tuple(windows)
    except TypeError:
        windows = ()
    if (not windows or len(set(windows)) != len(windows)
            or not all(isinstance(w, (int, np.integer, str)) and not isinstance(w, bool) and w in SPOT_WINDOWS
                       for w in windows)):
        raise ValueError(f"window = {window!r}: must be one of {SPOT_WINDOWS} or a non-empty set of them")
    return tuple(w for w in SPOT_WINDOWS if w in windows)


def spot_columns(window) -> np.ndarray:
    """Columns of the full spot block (every window of :data:`SPOT_WINDOWS`, in order) of one window, or of a
    set of them side by side (:func:`spot_windows`)."""
    width = len(spot_names())
    return np.concatenate([np.arange(SPOT_WINDOWS.index(w) * width, (SPOT_WINDOWS.index(w) + 1) * width)
                           for w in spot_windows(window)])


# ---------------------------------------------------------------------------------------------------------
# SIFT and the bag of visual words
# ---------------------------------------------------------------------------------------------------------

def sift_keypoints(image):
    """OpenCV's SIFT keypoints and descriptors of one frame.

    Returns
    -------
    keypoints : tuple of cv2.KeyPoint
    descriptors : (k, 128) uint8
        OpenCV saturates every element to 0…255 and rounds it, so uint8 holds them exactly.
    """
    import cv2

    keypoints, descriptors = cv2.SIFT_create().detectAndCompute(_check_image(image), None)
    if descriptors is None:
        return keypoints, np.zeros((0, 128), dtype=np.uint8)
    return keypoints, descriptors.astype(np.uint8)


def sift_descriptors(image) -> np.ndarray:
    """The SIFT descriptors of one frame, (k, 128) uint8 (k may be 0)."""
    return sift_keypoints(image)[1]


class Vocabulary:
    """A bag of visual words: k-means centres of SIFT descriptors.

    Parameters
    ----------
    centres : (k, 128) float64

    Attributes
    ----------
    k : int
    """

    def __init__(self, centres):
        self.centres = np.ascontiguousarray(centres, dtype=np.float64)
        if self.centres.ndim != 2 or self.centres.shape[1] != 128:
            raise ValueError(f"centres.shape = {self.centres.shape}: must be (k, 128)")
        self.k = len(self.centres)

    @classmethod
    def fit(cls, descriptors, k: int, *, seed: int = 0, max_descriptors: int = MAX_VOCABULARY_DESCRIPTORS):
        """Fit a k-word vocabulary with mini-batch k-means on (a seeded sample of) ``descriptors``.

        Fit it on the *training* frames only: every split is then described in the same words.

        Parameters
        ----------
        descriptors : (m, 128) array
            m ≥ 1; with m ≤ k every descriptor becomes a word and the rest of the k are unused copies.
        k : int
        seed : int
        max_descriptors : int
        """
        from sklearn.cluster import MiniBatchKMeans

        descriptors = np.asarray(descriptors)
        if not (isinstance(k, (int, np.integer)) and k >= 1):
            raise ValueError(f"k = {k!r}: must be a whole number ≥ 1")
        if len(descriptors) == 0:
            raise ValueError("no descriptors to fit the vocabulary on")
        rng = np.random.default_rng(seed)
        if len(descriptors) <= k:
            # too few to cluster: each descriptor is a word, and the spare words repeat the last one, which
            # never wins a tie (the first nearest centre does), so their columns stay 0
            centres = np.asarray(descriptors, dtype=np.float64)
            return cls(np.concatenate([centres, np.repeat(centres[-1:], k - len(centres), axis=0)]))
        if len(descriptors) > max_descriptors:
            descriptors = descriptors[np.sort(rng.choice(len(descriptors), max_descriptors, replace=False))]
        kmeans = MiniBatchKMeans(n_clusters=k, batch_size=max(2048, 2 * k), n_init=1, max_iter=20,
                                 init_size=min(len(descriptors), max(3 * k, 3 * 2048)),
                                 random_state=int(rng.integers(2**31)))
        kmeans.fit(descriptors.astype(np.float32))
        return cls(kmeans.cluster_centers_)

    def words(self, descriptors) -> np.ndarray:
        """Index of the nearest centre of each descriptor, (m,) int64."""
        from sklearn.metrics import pairwise_distances_argmin

        descriptors = np.asarray(descriptors, dtype=np.float64)
        if len(descriptors) == 0:
            return np.zeros(0, dtype=np.int64)
        return pairwise_distances_argmin(descriptors, self.centres).astype(np.int64)

    def histograms(self, descriptors, offsets) -> np.ndarray:
        """Normalised word histograms of many frames whose descriptors are stacked.

        Parameters
        ----------
        descriptors : (m, 128)
        offsets : (n + 1,) int
            Frame i owns ``descriptors[offsets[i]:offsets[i + 1]]``.

        Returns
        -------
        (n, k) float32
            Each row sums to 1; a frame without keypoints gets the zero vector (no word seen).
        """
        offsets = np.asarray(offsets, dtype=np.int64)
        n = len(offsets) - 1
        out = np.zeros((n, self.k), dtype=np.float32)
        step = 200_000  # descriptors per block: bounds the distance matrix's memory
        for start in range(0, offsets[-1], step):
            stop = min(start + step, offsets[-1])
            words = self.words(descriptors[start:stop])
            frame = np.searchsorted(offsets, np.arange(start, stop), side="right") - 1
            np.add.at(out, (frame, words), 1.0)
        counts = np.diff(offsets).astype(np.float32)
        np.divide(out, counts[:, None], out=out, where=counts[:, None] > 0)
        return out


# ---------------------------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------------------------

def extract(kind: str, images, **params) -> np.ndarray:
    """Features of a batch of 8-bit frames.

    Parameters
    ----------
    kind : {"glcm", "lbp", "sift", "spots"}
    images : (n, M, N) uint8
        As classifiers see frames (:func:`diffranb.dataset.to_8bit`).
    **params
        glcm: ``distances`` (pixels) and ``angles`` (degrees), default the whole search space;
        lbp: ``points`` and ``radius``; sift: ``vocabulary``, a fitted :class:`Vocabulary`; spots:
        ``window`` (default 5; or a set of backgrounds, :func:`spot_windows`, whose statistics are put side by side)
        and ``mask`` (:func:`detector_mask`; default None, no pixel masked).

    Returns
    -------
    (n, d) float64
        d = 6·len(distances)·len(angles) for glcm, P + 2 for lbp, k for sift, 25 per window for spots.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images.shape = {images.shape}: must be (n, M, N)")
    if kind == "glcm":
        distances, angles = params.pop("distances", GLCM_DISTANCES), params.pop("angles", GLCM_ANGLES)
        _no_more(kind, params)
        return np.stack([glcm_features(im, distances, angles) for im in images]) if len(images) else \
            np.zeros((0, 6 * len(distances) * len(angles)))
    if kind == "lbp":
        points, radius = params.pop("points"), params.pop("radius")
        _no_more(kind, params)
        return np.stack([lbp_histogram(im, points, radius) for im in images]) if len(images) else \
            np.zeros((0, points + 2))
    if kind == "sift":
        vocabulary = params.pop("vocabulary")
        _no_more(kind, params)
        descriptors = [sift_descriptors(im) for im in images]
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in descriptors])])
        stacked = np.concatenate(descriptors) if descriptors else np.zeros((0, 128), np.uint8)
        return vocabulary.histograms(stacked, offsets).astype(np.float64)
    if kind == "spots":
        windows, mask = spot_windows(params.pop("window", SPOT_WINDOWS[0])), params.pop("mask", None)
        _no_more(kind, params)
        return np.stack(_map_frames(lambda im: spot_block(im, windows, mask), images)) \
            if len(images) else np.zeros((0, len(windows) * len(spot_names())))
    raise ValueError(f"kind = {kind!r}: must be one of {KINDS}")


def _map_frames(function, images) -> list:
    """``function`` of every frame, in order, on as many threads as numba may use (``numba.get_num_threads``):
    the compiled spot statistics and OpenCV's medians release the GIL, so one process sorts on every core it is
    given, and on one core where it is held to one thread (:func:`diffranb.threads.limited`)."""
    threads = min(numba.get_num_threads(), len(images))
    if threads <= 1:
        return [function(image) for image in images]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(function, images))


def feature_names(kind: str, **params) -> list:
    """Column names of :func:`extract`'s output, e.g. ``contrast d=1 0°``, ``lbp8,1 code 3``, ``word 7``."""
    if kind == "glcm":
        distances, angles = params.get("distances", GLCM_DISTANCES), params.get("angles", GLCM_ANGLES)
        return [f"{p} d={d} {a}°" for p in GLCM_PROPS for d in distances for a in angles]
    if kind == "lbp":
        return [f"lbp{params['points']},{params['radius']} code {c}" for c in range(params["points"] + 2)]
    if kind == "sift":
        return [f"word {w}" for w in range(params["k"])]
    if kind == "spots":
        windows = spot_windows(params.get("window", SPOT_WINDOWS[0]))
        if len(windows) == 1:
            return spot_names()
        return [f"w{w} {name}" for w in windows for name in spot_names()]
    raise ValueError(f"kind = {kind!r}: must be one of {KINDS}")


def _no_more(kind, params):
    if params:
        raise TypeError(f"extract({kind!r}): unexpected parameters {sorted(params)}")


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"image: {image.dtype} of shape {image.shape}; must be a 2-D uint8 frame")
    return np.ascontiguousarray(image)


# ---------------------------------------------------------------------------------------------------------
# Whole data sets: chunked, parallel, cached
# ---------------------------------------------------------------------------------------------------------

def _block_features(images, block: str, mask=None):
    """The widest variant of an extractor for a chunk of frames (what :class:`FeatureStore` caches); ``mask``
    is the spot statistics' detector mask."""
    if block == "glcm":
        return np.stack([glcm_features(im) for im in images])
    if block == "lbp":
        out = []
        for im in images:
            f = im.astype(np.float64)
            row = []
            for p, r in product(LBP_POINTS, LBP_RADII):
                codes = _lbp_uniform(f, lbp_circle(p, r))
                row.append(np.bincount(codes.ravel(), minlength=p + 2) / codes.size)
            out.append(np.concatenate(row))
        return np.stack(out)
    if block == "sift":
        return [sift_descriptors(im) for im in images]
    if block == "spots":
        return extract("spots", images, window=SPOT_WINDOWS, mask=mask)
    raise ValueError(block)


def _extract_chunk(path: str, start: int, stop: int, blocks: tuple, mask=None):
    from . import dataset

    with dataset.open_dataset(path) as ds:
        images = dataset.to_8bit(ds.images[start:stop])
    return start, {block: _block_features(images, block, mask) for block in blocks}


def _init_worker():
    numba.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)


class FeatureStore:
    """Features of every frame of one data set, extracted once and kept on disk.

    Files live in ``cache_dir/<first 16 hex digits of the set's content hash>/``, one per extractor block
    and parameters, each with a JSON sidecar saying what it holds; they are written through a temporary
    file and a rename, so an interrupted extraction leaves nothing half-written.

    Parameters
    ----------
    data : str or os.PathLike
        A data set built by :func:`diffranb.dataset.build`.
    cache_dir : str or os.PathLike, optional
        Default: ``<data>.features`` beside the set.
    workers : int
        Processes extracting chunks in parallel (0 or 1: this process).
    chunk_size : int
        Frames per task.
    progress : bool
        Show a progress bar (stderr).

    Attributes
    ----------
    labels, split : (n,) uint8
        Label and split codes of every frame, as in the set.
    content_sha256 : str
    """

    def __init__(self, data, cache_dir=None, *, workers: int = 2, chunk_size: int = 32, progress: bool = True):
        from . import dataset

        self.data = Path(data)
        with dataset.open_dataset(self.data) as ds:
            self.content_sha256 = ds.content_sha256
            self.labels, self.split, self.classes = ds.labels.copy(), ds.split.copy(), ds.classes
            self.shape = ds.images.shape
        root = Path(cache_dir) if cache_dir is not None else self.data.with_name(self.data.name + ".features")
        self.dir = root / self.content_sha256[:16]
        self.workers, self.chunk_size, self.progress = workers, chunk_size, progress
        self._memo = {}

    def __len__(self):
        return len(self.labels)

    def indices(self, split: str) -> np.ndarray:
        """Frames of one split."""
        from .dataset import SPLITS

        return np.flatnonzero(self.split == SPLITS.index(split))

    # -- the cached blocks --------------------------------------------------------------------------------

    def _path(self, name: str, params: dict) -> Path:
        key = json.dumps({"name": name, "params": params, "version": EXTRACTOR_VERSIONS[name.split("-")[0]],
                          "dataset": self.content_sha256}, sort_keys=True)
        return self.dir / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def _save(self, path: Path, arrays: dict, meta: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path.with_suffix(".npz"))
        path.with_suffix(".json").write_text(json.dumps(meta | {"dataset_sha256": self.content_sha256,
                                                                "data": str(self.data)}, indent=1))

    def _load(self, path: Path):
        if path in self._memo:
            return self._memo[path]
        file = path.with_suffix(".npz")
        if not file.exists():
            return None
        with np.load(file) as z:
            arrays = {k: z[k] for k in z.files}
        if not path.name.startswith("sift-words"):  # the blocks are small and reused; word tables may not be
            self._memo[path] = arrays
        return arrays

    def _run(self, blocks: tuple, desc: str, mask=None) -> list:
        """Extract ``blocks`` for every frame, reading and decoding each chunk once, on ``workers`` processes
        (``mask``: the spot statistics' detector mask); one dict of block → value per chunk, in frame order."""
        from tqdm.auto import tqdm

        n = len(self)
        bounds = [(a, min(a + self.chunk_size, n)) for a in range(0, n, self.chunk_size)]
        results = [None] * len(bounds)
        with tqdm(total=n, unit="img", desc=desc, disable=not self.progress, smoothing=0.05) as bar:
            if self.workers <= 1:
                for k, (a, b) in enumerate(bounds):
                    results[k] = _extract_chunk(str(self.data), a, b, blocks, mask)[1]
                    bar.update(b - a)
                return results
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                     initializer=_init_worker) as pool:
                futures = {pool.submit(_extract_chunk, str(self.data), a, b, blocks, mask): k
                           for k, (a, b) in enumerate(bounds)}
                for future in as_completed(futures):
                    k = futures[future]
                    results[k] = future.result()[1]
                    bar.update(bounds[k][1] - bounds[k][0])
        return results

    _BLOCK_PARAMS = {"glcm": {"distances": GLCM_DISTANCES, "angles": GLCM_ANGLES},
                     "lbp": {"points": LBP_POINTS, "radii": LBP_RADII},
                     "spots": {"windows": SPOT_WINDOWS, "levels": SPOT_LEVELS, "band_levels": SPOT_BAND_LEVELS,
                               "bands": SPOT_BANDS, "annuli": NOISE_ANNULI, "kernel": SPOT_KERNELS[SPOT_KERNEL]}}

    def _block_params(self, kind: str, mask=None) -> dict:
        return self._BLOCK_PARAMS[kind] | ({"mask": mask_digest(mask)} if kind == "spots" else {})

    def _block_path(self, kind: str, mask=None) -> Path:
        if kind == "sift":
            return self._path("sift-descriptors", {})
        return self._path(kind, self._block_params(kind, mask))

    def _resolve_mask(self, mask):
        return self.mask() if isinstance(mask, str) and mask == "train" else mask

    def _extract(self, kinds, mask=None) -> None:
        """Extract the blocks of ``kinds`` in one pass over the set and cache them (spots with ``mask``)."""
        kinds = tuple(kinds)
        chunks = self._run(kinds, "+".join(kinds) + " features", mask)
        for kind in kinds:
            if kind == "sift":
                per_frame = [d for chunk in chunks for d in chunk["sift"]]
                offsets = np.concatenate([[0], np.cumsum([len(d) for d in per_frame])]).astype(np.int64)
                stacked = np.concatenate(per_frame) if per_frame else np.zeros((0, 128), np.uint8)
                self._save(self._block_path(kind), {"descriptors": stacked, "offsets": offsets},
                           {"kind": "sift-descriptors"})
            else:
                self._save(self._block_path(kind, mask), {"features": np.concatenate([c[kind] for c in chunks])},
                           {"kind": kind, "params": self._block_params(kind, mask)})

    def mask(self) -> np.ndarray:
        """The set's detector mask (:func:`detector_mask`), learnt from a seeded sample of
        :data:`MASK_FRAMES` frames of the *training* split only (cached); nothing is masked when the set has no
        training frames. (M, N) bool."""
        from . import dataset

        train = self.indices("train")
        path = self._path("spots-mask", {"frames": MASK_FRAMES, "hot_dead_share": BAD_PIXEL_SHARE,
                                         "lit": LIT_FRAME_LEVEL, "shadow": [SHADOW_LEVEL, SHADOW_SHARE,
                                                                            SHADOW_MARGIN_PX]})
        cached = self._load(path)
        if cached is not None:
            return cached["mask"]
        if len(train) == 0:
            mask = np.zeros(self.shape[1:], dtype=bool)
        else:
            rng = np.random.default_rng(0)
            sample = np.sort(rng.choice(train, min(MASK_FRAMES, len(train)), replace=False))
            with dataset.open_dataset(self.data) as ds:
                mask = detector_mask(np.stack([ds.image8(int(i)) for i in sample]))
        self._save(path, {"mask": mask}, {"kind": "spots-mask", "fitted_on": "train",
                                          "frames": int(min(MASK_FRAMES, len(train))), "masked": int(mask.sum())})
        return self._load(path)["mask"]

    def block(self, kind: str, mask="train") -> np.ndarray:
        """The full block of ``kind`` ("glcm": (n, 120); "lbp": (n, 180); "spots": (n, 75)), extracted if not
        cached. ``mask`` (spots only): ``"train"``, the set's own :meth:`mask`; None, no pixel masked; or an
        (M, N) bool array, e.g. a saved model's."""
        if kind not in ("glcm", "lbp", "spots"):
            raise ValueError(f"kind = {kind!r}: blocks exist for 'glcm', 'lbp' and 'spots'")
        mask = self._resolve_mask(mask) if kind == "spots" else None
        if mask is not None:
            mask = _check_mask(mask, tuple(self.shape[1:]))
        if self._load(self._block_path(kind, mask)) is None:
            self._extract((kind,), mask)
        return self._load(self._block_path(kind, mask))["features"]

    def descriptors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every frame's SIFT descriptors, stacked: ((m, 128) uint8, (n + 1,) int64 offsets)."""
        if self._load(self._block_path("sift")) is None:
            self._extract(("sift",))
        cached = self._load(self._block_path("sift"))
        return cached["descriptors"], cached["offsets"]

    def vocabulary(self, k: int, seed: int = 0) -> Vocabulary:
        """The k-word vocabulary, fitted on the descriptors of the *training* frames only (cached)."""
        path = self._path("sift-vocabulary", {"k": int(k), "seed": int(seed),
                                              "max_descriptors": MAX_VOCABULARY_DESCRIPTORS})
        cached = self._load(path)
        if cached is not None:
            return Vocabulary(cached["centres"])
        descriptors, offsets = self.descriptors()
        train = self.indices("train")
        mine = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in train]) if len(train) else []
        vocab = Vocabulary.fit(descriptors[np.asarray(mine, dtype=np.int64)], int(k), seed=seed)
        self._save(path, {"centres": vocab.centres}, {"kind": "sift-vocabulary", "k": int(k), "seed": int(seed),
                                                      "fitted_on": "train"})
        return vocab

    def features(self, kind: str, **params) -> np.ndarray:
        """The feature matrix of every frame for one extractor setting, (n, d).

        ``glcm``: ``distances``, ``angles`` (a column selection of the cached block); ``lbp``: ``points``,
        ``radius`` (likewise); ``sift``: ``k``, optional ``seed`` (histograms cached per vocabulary);
        ``spots``: ``window`` (one or a set, :func:`spot_windows`: a column selection), ``mask`` (as for
        :meth:`block`; default the set's own).
        """
        if kind == "glcm":
            cols = glcm_columns(params.get("distances", GLCM_DISTANCES), params.get("angles", GLCM_ANGLES))
            return self.block("glcm")[:, cols]
        if kind == "lbp":
            return self.block("lbp")[:, lbp_columns(params["points"], params["radius"])]
        if kind == "sift":
            k, seed = int(params["k"]), int(params.get("seed", 0))
            path = self._path("sift-words", {"k": k, "seed": seed, "max_descriptors": MAX_VOCABULARY_DESCRIPTORS})
            cached = self._load(path)
            if cached is not None:
                return cached["features"]
            vocab = self.vocabulary(k, seed)
            descriptors, offsets = self.descriptors()
            values = vocab.histograms(descriptors, offsets)
            self._save(path, {"features": values}, {"kind": "sift-words", "k": k, "seed": seed})
            return values
        if kind == "spots":
            return self.block("spots", params.get("mask", "train"))[:, spot_columns(params.get("window",
                                                                                          SPOT_WINDOWS[0]))]
        raise ValueError(f"kind = {kind!r}: must be one of {KINDS}")

    def precompute(self, kinds=PAPER_KINDS) -> None:
        """Extract every block of the given kinds not yet cached, in one pass over the set (the SIFT
        vocabularies are fitted on demand)."""
        mask = self.mask() if "spots" in kinds else None
        missing = [kind for kind in kinds if self._load(self._block_path(kind, mask)) is None]
        if missing:
            self._extract(missing, mask)
