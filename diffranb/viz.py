"""Figures of detector images, their differences and radial profiles.

Every plot function takes its data first, draws into ``ax`` (a new figure when ``None``) and returns the
Axes; none calls ``plt.show()`` or sets a title, since captions belong in the notebook's figure metadata.
Images are indexed ``image[slow, fast]`` and pixel ``i`` has its centre at coordinate ``i``, as in
:mod:`diffranb.sim`.
"""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors, ticker
from matplotlib.axes import Axes
from PIL import Image

SCALES = ("sqrt", "log", "linear")

#: Decades shown below ``vmax`` on the log scale: detector images span about four (background to spot).
LOG_DECADES = 4.0

#: Percentile that sets the default top of the colour scale, so that a handful of saturated Bragg spots
#: do not turn every other pixel white.
VMAX_PERCENTILE = 99.9


def default_vmax(image) -> float:
    """Top of the colour scale when none is given: the 99.9th percentile, or the maximum if that is 0.

    Parameters
    ----------
    image : (M, N) array, photons or ADU

    Returns
    -------
    float, in the image's unit; 1.0 for an image with no positive pixel.
    """
    data = np.asarray(image, dtype=np.float64)
    top = float(np.percentile(data, VMAX_PERCENTILE))
    if top <= 0:
        top = float(data.max())
    return top if top > 0 else 1.0


def norm(scale: str, vmax: float) -> colors.Normalize:
    """The map from image values to [0, 1] that both :func:`show_pattern` and :func:`to_png_bytes` use.

    Parameters
    ----------
    scale : {"sqrt", "log", "linear"}
        ``sqrt`` shows counting statistics evenly; ``log`` spans :data:`LOG_DECADES` below ``vmax``.
    vmax : float, image unit
        Value drawn at full intensity; 0 is drawn at none (the bottom of the log scale for ``log``).
    """
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: must be one of {SCALES}")
    if not vmax > 0:
        raise ValueError(f"vmax={vmax!r}: must be > 0")
    # No clipping here: a colour bar of a clipped norm piles the ticks above vmax onto its top end. Values
    # beyond vmax take the colour map's end colour all the same.
    if scale == "sqrt":
        return colors.PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax)
    if scale == "log":
        return colors.LogNorm(vmin=vmax * 10.0**-LOG_DECADES, vmax=vmax)
    return colors.Normalize(vmin=0.0, vmax=vmax)


def show_pattern(image, *, ax: Axes | None = None, scale: str = "sqrt", vmax: float | None = None,
                 cmap: str = "gray_r", beam_center=None, colorbar: bool = True, unit: str = "photons",
                 **kw) -> Axes:
    """Draw a detector image with its slow axis down and its fast axis across.

    Parameters
    ----------
    image : (M, N) array, photons (float) or ADU (integer)
        Indexed ``image[slow, fast]``.
    ax : matplotlib Axes, optional
    scale : {"sqrt", "log", "linear"}
    vmax : float, image unit, optional
        Value drawn black (with ``gray_r``); defaults to :func:`default_vmax`.
    cmap : str
    beam_center : (float, float), pixels, optional
        (slow, fast) coordinates of the direct beam, marked with a cross.
    colorbar : bool
    unit : str
        Unit of the image values, the colour bar's label: ``"photons"`` or ``"ADU"``.
    **kw
        Passed to :meth:`~matplotlib.axes.Axes.imshow`.

    Returns
    -------
    matplotlib Axes
    """
    vmax = default_vmax(image) if vmax is None else vmax
    ax = _show_image(image, "image", ax, colorbar, unit, cmap=cmap, norm=norm(scale, vmax), **kw)
    if beam_center is not None:
        slow, fast = beam_center
        ax.plot([fast], [slow], marker="+", markersize=12, color="tab:red", linestyle="none")
    return ax


def _show_image(values, name: str, ax: Axes | None, colorbar: bool, label: str, **kw) -> Axes:
    """The image, pixel axes and colour bar that :func:`show_pattern` and :func:`show_map` both draw.

    Slow runs down and pixel ``i`` is centred at coordinate ``i``; ``name`` is the caller's argument, for the
    error message; ``label`` labels the colour bar, drawn if ``colorbar``; ``kw`` go to
    :meth:`~matplotlib.axes.Axes.imshow`.
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"{name}.shape={values.shape}: must be 2-D (slow, fast)")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5), layout="constrained")
    im = ax.imshow(values, interpolation="nearest", origin="upper", **kw)
    ax.set_xlabel("fast (px)")
    ax.set_ylabel("slow (px)")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label=label)
    return ax


def relative_difference(ours, ref, *, floor: float = 1.0) -> np.ma.MaskedArray:
    """Signed relative difference (ours − ref) / ref, masked where |ref| ≤ ``floor``.

    Parameters
    ----------
    ours, ref : (M, N) arrays, same unit (photons)
    floor : float, same unit
        Pixels this faint in the reference are masked: their relative error is noise.

    Returns
    -------
    (M, N) float64 masked array, dimensionless
    """
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"ours.shape={ours.shape} and ref.shape={ref.shape}: must be equal")
    mask = ~(np.abs(ref) > floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = (ours - ref) / ref
    return np.ma.masked_array(diff, mask=mask)


def plot_difference(ours, ref, *, ax: Axes | None = None, floor: float = 1.0, vlim: float | None = None,
                    cmap: str = "RdBu_r", colorbar: bool = True, **kw) -> Axes:
    """Map of the signed relative difference between two images of the same scene.

    Parameters
    ----------
    ours, ref : (M, N) arrays, photons
    ax : matplotlib Axes, optional
    floor : float, photons
        Pixels with ``ref`` at or below it are left blank (see :func:`relative_difference`).
    vlim : float, optional
        Colour limits ±vlim; defaults to the largest |difference| shown.
    cmap : str
        A diverging map, so that zero is white and the sign is the hue.
    colorbar : bool
    **kw
        Passed to :meth:`~matplotlib.axes.Axes.imshow`.

    Returns
    -------
    matplotlib Axes
    """
    diff = relative_difference(ours, ref, floor=floor)
    if vlim is None:
        vlim = float(np.abs(diff).max()) if diff.count() else 0.0
        vlim = vlim if vlim > 0 else 1e-12
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5), layout="constrained")
    im = ax.imshow(diff, cmap=cmap, vmin=-vlim, vmax=vlim, interpolation="nearest", origin="upper", **kw)
    ax.set_xlabel("fast (px)")
    ax.set_ylabel("slow (px)")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label="(ours − reference) / reference")
    return ax


def plot_radial_profile(profiles: dict, *, ax: Axes | None = None, xlabel: str = "sinθ/λ (Å⁻¹)",
                        ylabel: str = "photons / pixel", **kw) -> Axes:
    """Overlay radial profiles, one line per entry.

    Parameters
    ----------
    profiles : dict of label -> (x, y)
        ``x`` in the unit of ``xlabel`` (default sinθ/λ, Å⁻¹), ``y`` in that of ``ylabel``.
    ax : matplotlib Axes, optional
    xlabel, ylabel : str
        Axis labels, with units in parentheses or after a slash.
    **kw
        Passed to every :meth:`~matplotlib.axes.Axes.plot` call.

    Returns
    -------
    matplotlib Axes
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    for label, (x, y) in profiles.items():
        ax.plot(x, y, label=label, **kw)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(profiles) > 1:
        ax.legend()
    return ax


def to_png_bytes(image, scale: str = "sqrt", vmax: float | None = None, cmap: str = "gray_r") -> bytes:
    """Encode a detector image as an 8-bit RGB PNG with the colours of :func:`show_pattern`.

    For live widgets: no figure is made, so a 512×512 image encodes in milliseconds.

    Parameters
    ----------
    image : (M, N) array, photons or ADU
    scale : {"sqrt", "log", "linear"}
    vmax : float, image unit, optional
        Defaults to :func:`default_vmax`.
    cmap : str

    Returns
    -------
    bytes
        A PNG of M rows and N columns.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image.shape={image.shape}: must be 2-D (slow, fast)")
    vmax = default_vmax(image) if vmax is None else vmax
    level = np.clip(np.ma.filled(norm(scale, vmax)(image.astype(np.float64)), 0.0), 0.0, 1.0)
    index = np.rint(level * 255.0).astype(np.uint8)
    lut = (plt.get_cmap(cmap)(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(lut[index]).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mark_spots(positions, *, ax: Axes | None = None, size: float = 60.0, color: str = "tab:red", **kw) -> Axes:
    """Circle given (slow, fast) positions on a detector image, e.g. predicted Bragg spots.

    Parameters
    ----------
    positions : (n, 2) array, pixels
        (slow, fast) pixel-centre coordinates, as from :func:`diffranb.sim.bragg.predict_spots`.
    ax : matplotlib Axes, optional
        Usually the Axes :func:`show_pattern` drew into.
    size : float, points²
        Marker area.
    color : str
    **kw
        Passed to :meth:`~matplotlib.axes.Axes.scatter`.

    Returns
    -------
    matplotlib Axes
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5), layout="constrained")
    ax.scatter(positions[:, 1], positions[:, 0], s=size, facecolors="none", edgecolors=color, linewidths=0.8, **kw)
    return ax


def show_map(values, *, ax: Axes | None = None, unit: str = "", cmap: str = "viridis", vmin: float | None = None,
             vmax: float | None = None, colorbar: bool = True, **kw) -> Axes:
    """Draw a per-pixel map of a physical quantity (solid angle, polarisation factor, sinθ/λ) on a linear scale.

    Unlike :func:`show_pattern`, the colour scale spans the values' own range, so that a quantity varying by
    a few per cent across the detector still shows its pattern.

    Parameters
    ----------
    values : (M, N) array
        Indexed ``values[slow, fast]``.
    ax : matplotlib Axes, optional
    unit : str
        The colour bar's label: the quantity and its unit, e.g. ``"Ω (sr)"``.
    cmap : str
    vmin, vmax : float, optional
        Colour limits; default to the values' minimum and maximum.
    colorbar : bool
    **kw
        Passed to :meth:`~matplotlib.axes.Axes.imshow`.

    Returns
    -------
    matplotlib Axes
    """
    return _show_image(values, "values", ax, colorbar, unit, cmap=cmap, vmin=vmin, vmax=vmax, **kw)


def plot_ewald_section(points, wavelength_A: float, *, ax: Axes | None = None, tolerance: float = 0.01,
                       **kw) -> Axes:
    """The Ewald construction in one plane: reciprocal lattice points and the sphere of reflection.

    The beam runs along +x (to the right); the sphere of radius 1/λ is centred at −x̂/λ and passes through
    the origin. Points within ``tolerance`` of it diffract and are drawn filled, with the diffracted ray
    from the sphere's centre through them.

    Parameters
    ----------
    points : (n, 2) array, Å⁻¹
        (x, y) lab coordinates of reciprocal lattice points lying in the plane drawn.
    wavelength_A : float, Å
    ax : matplotlib Axes, optional
    tolerance : float, Å⁻¹
        Largest distance from the sphere that counts as "in diffraction".
    **kw
        Passed to the :meth:`~matplotlib.axes.Axes.scatter` call of the lattice points.

    Returns
    -------
    matplotlib Axes
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    k = 1.0 / wavelength_A
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    on = np.abs(np.hypot(points[:, 0] + k, points[:, 1]) - k) <= tolerance
    ax.scatter(points[~on, 0], points[~on, 1], s=6, color="0.6", **kw)
    ax.scatter(points[on, 0], points[on, 1], s=30, color="tab:red", zorder=3, label="in diffraction", **kw)
    phi = np.linspace(0.0, 2.0 * np.pi, 721)
    ax.plot(-k + k * np.cos(phi), k * np.sin(phi), color="tab:blue", lw=1.0, label="Ewald sphere, radius 1/λ")
    ax.annotate("", xy=(0.0, 0.0), xytext=(-k, 0.0),
                arrowprops=dict(arrowstyle="->", color="k", lw=1.2))
    ax.text(-k / 2, -0.03 * k, "x̂/λ (beam)", ha="center", va="top")
    for x, y in points[on]:
        ax.annotate("", xy=(x, y), xytext=(-k, 0.0), arrowprops=dict(arrowstyle="->", color="tab:red", lw=0.6))
    ax.set_aspect("equal")
    ax.set_xlabel("q_x, along the beam (Å⁻¹)")
    ax.set_ylabel("q_y (Å⁻¹)")
    ax.legend(loc="upper left", fontsize="small")
    return ax


def label_panel(ax: Axes, text: str, **kw) -> Axes:
    """Write a short label in the top-left corner of a panel, on a white box so that it reads on any image.

    Parameters
    ----------
    ax : matplotlib Axes
    text : str
    **kw
        Passed to :meth:`~matplotlib.axes.Axes.text`.

    Returns
    -------
    matplotlib Axes
    """
    style = dict(transform=ax.transAxes, va="top", ha="left", fontsize="small",
                 bbox=dict(boxstyle="round,pad=0.25", facecolor="white", edgecolor="none", alpha=0.85))
    style.update(kw)
    ax.text(0.03, 0.97, text, **style)
    return ax


# ---------------------------------------------------------------------------------------------------------
# Data set figures (diffranb.dataset): gallery, defining quantity, parameters and shares by class
# ---------------------------------------------------------------------------------------------------------

#: One colour per class, in the order of :data:`diffranb.dataset.ALL_CLASSES`.
CLASS_COLORS = {"blank": "0.55", "no-crystal": "tab:blue", "weak": "tab:orange", "good": "tab:green",
                "strong": "tab:red", "ice": "tab:cyan"}


def plot_gallery(images, panel_labels, *, ncols: int = 4, axes=None, cmap: str = "gray_r") -> np.ndarray:
    """Show 8-bit frames side by side on one fixed grey scale (0 white, 255 black with ``gray_r``).

    Parameters
    ----------
    images : sequence of (M, N) uint8
        Frames as the classifiers see them (:func:`diffranb.dataset.to_8bit`).
    panel_labels : sequence of str
        One short label per frame, written in its corner.
    ncols : int
        Panels per row.
    axes : array of matplotlib Axes, optional
        At least ``len(images)`` of them; extra ones are hidden.
    cmap : str

    Returns
    -------
    ndarray of matplotlib Axes
    """
    images = list(images)
    if len(panel_labels) != len(images):
        raise ValueError(f"{len(panel_labels)} labels for {len(images)} images: need one each")
    if axes is None:
        nrows = max(1, -(-len(images) // ncols))
        _, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.2 * nrows), layout="constrained",
                               squeeze=False)
    axes = np.asarray(axes).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, image, text in zip(axes, images, panel_labels):
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"image.dtype = {image.dtype}: the gallery shows 8-bit frames")
        ax.imshow(image, cmap=cmap, vmin=0, vmax=255, interpolation="nearest", origin="upper")
        label_panel(ax, text)
    return axes


def plot_class_quantity(values, labels, classes, *, cuts=(), ax: Axes | None = None, log: bool = True,
                        xlabel: str = "reflections with I/σ ≥ 3", bins: int = 40) -> Axes:
    """Stacked histogram of a defining quantity, coloured by class, with the cut lines.

    Parameters
    ----------
    values : (n,) array
        The quantity per frame (e.g. ``n_significant``).
    labels : (n,) array of str
        Class of each frame.
    classes : sequence of str
        Classes to draw, in stacking order (frames of other classes are left out).
    cuts : sequence of float
        Where the classes are cut, drawn as dashed lines.
    ax : matplotlib Axes, optional
    log : bool
        Logarithmic bins from 1 (frames with a value below 1 are left out).
    xlabel : str
    bins : int

    Returns
    -------
    matplotlib Axes
    """
    values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    shown = np.isin(labels, list(classes)) & np.isfinite(values) & ((values >= 1) if log else True)
    top = max(float(values[shown].max()) if shown.any() else 2.0, 2.0)
    edges = np.geomspace(1.0, top * 1.05, bins + 1) if log else np.linspace(0.0, top * 1.05, bins + 1)
    data = [values[shown & (labels == c)] for c in classes]
    ax.hist(data, bins=edges, stacked=True, label=list(classes), color=[CLASS_COLORS.get(c, None) for c in classes])
    for cut in cuts:
        ax.axvline(cut, color="k", linestyle="--", linewidth=1.0)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("frames")
    ax.legend(fontsize="small")
    return ax


def plot_by_class(values, labels, classes, *, ax: Axes | None = None, xlabel: str = "", log: bool = False,
                  bins: int = 30) -> Axes:
    """Distribution of one drawn parameter within each class, as outlined density histograms.

    Parameters
    ----------
    values : (n,) array
        The parameter per frame, in the unit of ``xlabel``; NaN (not drawn) is left out.
    labels : (n,) array of str
    classes : sequence of str
    ax : matplotlib Axes, optional
    xlabel : str
        The parameter and its unit, e.g. ``"crystal size (µm)"``.
    log : bool
        Logarithmic bins and axis.
    bins : int

    Returns
    -------
    matplotlib Axes
    """
    values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    good = np.isfinite(values) & ((values > 0) if log else True)
    if good.any():
        lo, hi = float(values[good].min()), float(values[good].max())
        hi = hi if hi > lo else lo + 1.0
        edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
        for c in classes:
            member = good & (labels == c)
            if member.any():
                ax.hist(values[member], bins=edges, density=True, histtype="step", linewidth=1.3, label=c,
                        color=CLASS_COLORS.get(c, None))
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    return ax


def plot_class_shares(counts: dict, target_shares: dict, *, ax: Axes | None = None) -> Axes:
    """Class shares in each split (bars) against the target shares (black ticks).

    Parameters
    ----------
    counts : dict of split -> dict of class -> int
        As :meth:`diffranb.dataset.Dataset.counts` returns.
    target_shares : dict of class -> float
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    classes = list(target_shares)
    splits = list(counts)
    width = 0.8 / len(splits)
    x = np.arange(len(classes))
    for k, split in enumerate(splits):
        total = max(sum(counts[split].values()), 1)
        ax.bar(x + (k - (len(splits) - 1) / 2) * width, [100.0 * counts[split][c] / total for c in classes], width,
               label=f"{split} ({total})", alpha=0.85)
    ax.scatter(x, [100.0 * target_shares[c] for c in classes], marker="_", s=600, color="k", zorder=3,
               label="target")
    ax.set_xticks(x, classes)
    ax.set_ylabel("share of the split (%)")
    ax.legend(fontsize="small")
    return ax


# ---------------------------------------------------------------------------------------------------------
# Features and classic classifiers (chapters 3 and 4)
# ---------------------------------------------------------------------------------------------------------

def plot_glcm(matrix, *, ax: Axes | None = None, levels: int = 256, colorbar: bool = True) -> Axes:
    """A normalised grey-level co-occurrence matrix on a log scale (zeros left white).

    Parameters
    ----------
    matrix : (L, L) float
        Probabilities of grey-level pairs (reference level i down, neighbour level j across).
    ax : matplotlib Axes, optional
    levels : int
        Grey levels shown from 0 (the corner where empty detector pixels pile up).
    colorbar : bool
    """
    m = np.asarray(matrix, dtype=np.float64)[:levels, :levels]
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
    positive = m[m > 0]
    low = positive.min() if positive.size else 1e-12
    im = ax.imshow(np.ma.masked_less_equal(m, 0), cmap="viridis", origin="upper", interpolation="nearest",
                   norm=colors.LogNorm(vmin=max(low, 1e-9), vmax=max(m.max(), low * 10)))
    ax.set_xlabel("neighbour grey level j")
    ax.set_ylabel("reference grey level i")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label="P(i, j)")
    return ax


def plot_lbp(codes, points: int, *, ax: Axes | None = None, colorbar: bool = True) -> Axes:
    """Map of uniform LBP codes: 0 … P count neighbours at least as bright as the centre, P + 1 is
    "not uniform"."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5), layout="constrained")
    cmap = plt.get_cmap("viridis", points + 2)
    im = ax.imshow(codes, cmap=cmap, vmin=-0.5, vmax=points + 1.5, interpolation="nearest", origin="upper")
    ax.set_xlabel("fast (px)")
    ax.set_ylabel("slow (px)")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label="LBP code", ticks=[0, points // 2, points, points + 1])
    return ax


def plot_keypoints(image, keypoints, *, ax: Axes | None = None, color: str = "tab:orange", **kw) -> Axes:
    """An 8-bit frame with SIFT keypoints drawn as circles of their scale (OpenCV ``KeyPoint`` objects)."""
    ax = show_pattern(image, ax=ax, scale="linear", vmax=255, unit="grey level", **kw)
    for kp in keypoints:
        (x, y), r = kp.pt, kp.size / 2
        ax.add_patch(plt.Circle((x, y), r, fill=False, color=color, linewidth=0.8))
    return ax


def overlay_mask(mask, ax: Axes, *, color: str = "tab:blue", alpha: float = 0.6) -> Axes:
    """Paint the True pixels of a (M, N) mask over a frame drawn by :func:`show_pattern` (same pixel grid)."""
    from matplotlib.colors import ListedColormap

    mask = np.asarray(mask, dtype=bool)
    ax.imshow(np.ma.masked_where(~mask, np.ones(mask.shape)), cmap=ListedColormap([color]), alpha=alpha,
              interpolation="nearest", vmin=0, vmax=1)
    return ax


def plot_spot_peaks(image, *, window: int = 5, level: float = 8.0, mask=None, ax: Axes | None = None,
                    color: str = "tab:orange", mask_color: str = "tab:blue", **kw) -> Axes:
    """An 8-bit frame with the peaks the spot statistics count at significance ``level`` circled
    (:func:`diffranb.features.spot_significance`: 3 × 3 local maxima of the weighted sum of the excess over
    the local median, in units of its noise); with a detector ``mask`` (:func:`diffranb.features.detector_mask`)
    its pixels are ignored and drawn in ``mask_color``."""
    from .features import max_3x3, spot_significance

    z = spot_significance(image, window, mask)[0]
    peaks = np.argwhere((z >= max_3x3(z)) & (z >= level))
    ax = show_pattern(image, ax=ax, scale="linear", vmax=255, unit="grey level", **kw)
    if mask is not None:
        overlay_mask(mask, ax, color=mask_color)
    for i, j in peaks:
        ax.add_patch(plt.Circle((j, i), 6, fill=False, color=color, linewidth=0.8))
    return ax


def plot_feature_by_class(values, labels, classes, *, ax: Axes | None = None, ylabel: str = "",
                          log: bool = False) -> Axes:
    """Box plot of one feature within each class (whiskers at the 5th and 95th percentiles)."""
    values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
    data = [values[labels == c] for c in classes]
    ax.boxplot([d if d.size else [np.nan] for d in data], whis=(5, 95), showfliers=False)
    ax.set_xticks(range(1, len(classes) + 1), classes, rotation=20)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    return ax


def plot_search(losses, labels, *, ax: Axes | None = None) -> Axes:
    """Validation accuracy of every Hyperopt trial, coloured by classifier + extractor, with the running best.

    Parameters
    ----------
    losses : (n,) float
        1 − validation accuracy, NaN for failed trials (drawn as crosses at the bottom).
    labels : (n,) str
        e.g. ``"RF+GLCM"``.
    """
    losses, labels = np.asarray(losses, dtype=np.float64), np.asarray(labels)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    trial = np.arange(1, len(losses) + 1)
    accuracy = 100 * (1 - losses)
    ok = np.isfinite(accuracy)
    floor = np.nanmin(accuracy) if ok.any() else 0.0
    for k, name in enumerate(sorted(set(labels))):
        mine = labels == name
        ax.scatter(trial[mine & ok], accuracy[mine & ok], s=14, color=f"C{k}", label=name)
        if (mine & ~ok).any():
            ax.scatter(trial[mine & ~ok], np.full((mine & ~ok).sum(), floor), marker="x", s=18, color=f"C{k}")
    if ok.any():
        ax.step(trial, np.fmax.accumulate(np.where(ok, accuracy, -np.inf)), where="post", color="k",
                linewidth=1, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(fontsize="small", ncols=2)
    return ax


def plot_training_record(record: dict, *, runs=None):
    """A DeepFreak record (:func:`diffranb.deepfreak.report`) in one figure: learning curves
    (:func:`plot_learning_curves`), the test confusion matrix and, when the search's ``runs`` are given
    (:func:`diffranb.bohb.read_log`), the search (:func:`plot_bohb`).

    A figure of its own (three or four panels), so it takes no ``ax``.

    Returns
    -------
    matplotlib Figure
    """
    fig, axes = plt.subplot_mosaic([["loss", "accuracy"], ["confusion", "bohb" if runs else "."]],
                                   figsize=(11, 8), layout="constrained")
    plot_learning_curves(record["history"], axes=[axes["loss"], axes["accuracy"]])
    plot_confusion(record["test"]["confusion"], record["test"]["classes"], ax=axes["confusion"], colorbar=True)
    if runs:
        plot_bohb(runs, ax=axes["bohb"])
    return fig


def plot_report_confusions(result: dict, *, losses=None, labels=None):
    """Test confusion matrices of every pipeline in a :func:`diffranb.tune.report` record, one panel each,
    after a panel of the search (:func:`plot_search`) when its ``losses`` and ``labels`` are given.

    A figure of its own (one panel per pipeline), so it takes no ``ax``.

    Returns
    -------
    matplotlib Figure
    """
    methods = result["methods"]
    if (losses is None) != (labels is None):
        raise ValueError("losses and labels: give both (a panel of the search) or neither")
    search = losses is not None
    n = len(methods) + search
    fig, axes = plt.subplots(1, n, figsize=(4.6 * len(methods) + 6.5 * search, 4.2), layout="constrained",
                             squeeze=False, gridspec_kw={"width_ratios": [1.5] * search + [1] * len(methods)})
    axes = list(axes[0])
    if search:
        plot_search(losses, labels, ax=axes.pop(0))
    plot_confusions({name if name == m["label"] else f"{name} ({m['label']})": m["test"]
                     for name, m in methods.items()}, axes=axes)
    return fig


def plot_confusions(results: dict, *, axes=None):
    """Confusion matrices side by side, one panel per named result, each labelled with its accuracy.

    Parameters
    ----------
    results : dict
        Name → :func:`diffranb.evaluate.metrics` output (``confusion``, ``classes``, ``accuracy``).
    axes : sequence of Axes, optional
        One per result; a new figure (one row) when not given.

    Returns
    -------
    list of Axes
    """
    if not results:
        raise ValueError("plot_confusions: no results to draw")
    if axes is None:
        _, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4.2), layout="constrained",
                               squeeze=False)
        axes = list(axes[0])
    elif len(axes) != len(results):
        raise ValueError(f"plot_confusions: {len(results)} results need as many axes, not {len(axes)}")
    for ax, (name, m) in zip(axes, results.items()):
        plot_confusion(m["confusion"], m["classes"], ax=ax)
        ax.set_xlabel(f"predicted — {name}: {100 * m['accuracy']:.2f} %")
    return list(axes)


def plot_confusion(confusion, classes, *, ax: Axes | None = None, colorbar: bool = False) -> Axes:
    """Confusion matrix as row percentages (each true class sums to 100 %), with the counts written in."""
    c = np.asarray(confusion, dtype=np.float64)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.6, 4), layout="constrained")
    share = 100 * c / np.maximum(c.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            ax.text(j, i, f"{int(c[i, j])}", ha="center", va="center", fontsize="small",
                    color="white" if share[i, j] > 60 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label="share of the true class (%)")
    return ax


# ---------------------------------------------------------------------------------------------------------
# DeepFreak figures (diffranb.deepfreak, diffranb.bohb): search, learning curves, attention maps
# ---------------------------------------------------------------------------------------------------------

def plot_bohb(runs, *, ax: Axes | None = None, best: int = 3) -> Axes:
    """Validation accuracy of every BOHB evaluation against its budget, as in DeepFreak's Figure 3.

    Each configuration is a line through the budgets it reached, coloured by its topology; the black line
    and band are the mean and the range of the ``best`` best evaluations at each budget. Diverged, infeasible
    and failed evaluations are left out.

    Parameters
    ----------
    runs : list of dict
        :func:`diffranb.bohb.read_log` (``config_id``, ``config``, ``budget``, ``val_accuracy``).
    ax : matplotlib Axes, optional
    best : int

    Returns
    -------
    matplotlib Axes
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    ok = [r for r in runs if np.isfinite(r["loss"]) and np.isfinite(r["val_accuracy"])
          and "diverged" not in r["info"] and "infeasible" not in r["info"]]
    by_config = {}
    for r in ok:
        by_config.setdefault(r["config_id"], []).append(r)
    topologies = sorted({int(r["config"]["topology"]) for r in ok})
    cmap = plt.get_cmap("tab20", max(len(topologies), 1))
    for steps in by_config.values():
        steps.sort(key=lambda r: r["budget"])
        k = topologies.index(int(steps[0]["config"]["topology"]))
        ax.plot([r["budget"] for r in steps], [100 * r["val_accuracy"] for r in steps], "o-", ms=3.5, lw=0.8,
                color=cmap(k), alpha=0.8)
    budgets = sorted({r["budget"] for r in ok})
    tops = [sorted((100 * r["val_accuracy"] for r in ok if r["budget"] == b), reverse=True)[:best] for b in budgets]
    if budgets:
        ax.fill_between(budgets, [min(t) for t in tops], [max(t) for t in tops], color="k", alpha=0.12, lw=0)
        ax.plot(budgets, [np.mean(t) for t in tops], "k-", lw=2, label=f"best {best}: mean and range")
    for k, t in enumerate(topologies):
        ax.plot([], [], "o-", ms=3.5, lw=0.8, color=cmap(k), label=f"topology {t + 1}")
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("budget (epochs)")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(fontsize="x-small", ncols=2, loc="lower right")
    return ax


def plot_validation_curves(histories: dict, *, ax: Axes | None = None, target: float | None = None) -> Axes:
    """Validation accuracy per epoch of several training runs on one plot, to compare them.

    Parameters
    ----------
    histories : dict
        Run name → training history (``epoch``, ``val_accuracy``), e.g. a record's ``history``.
    ax : Axes, optional
    target : float, optional
        An accuracy to draw as a dashed line, per cent (e.g. the paper's test figure).

    Returns
    -------
    Axes
    """
    if not histories:
        raise ValueError("plot_validation_curves: no run to draw")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
    for name, history in histories.items():
        ax.plot([e["epoch"] for e in history], [100 * e["val_accuracy"] for e in history], "o-", ms=3, label=name)
    if target is not None:
        ax.axhline(target, color="0.3", ls="--", lw=1, label=f"paper's test figure ({target:.2f} %)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(fontsize="small")
    return ax


def plot_speed_accuracy(points: dict, *, rate_hz: float | None = None, target: float | None = None,
                        ax: Axes | None = None) -> Axes:
    """Test accuracy against sorting speed, one labelled point per pipeline, to choose one for a detector.

    Parameters
    ----------
    points : dict
        Pipeline name → (frames per second, accuracy in per cent).
    rate_hz : float, optional
        The detector's frame rate, drawn as a dotted vertical line: pipelines to its right keep up.
    target : float, optional
        An accuracy to draw as a dashed line, per cent (e.g. the paper's).
    ax : Axes, optional

    Returns
    -------
    Axes, frames per second on a log scale.
    """
    if not points:
        raise ValueError("plot_speed_accuracy: no pipeline to draw")
    if ax is None:
        _, ax = plt.subplots(figsize=(7.0, 4.2), layout="constrained")
    for k, (name, (rate, accuracy)) in enumerate(points.items()):
        if not (rate > 0 and np.isfinite(accuracy)):
            raise ValueError(f"plot_speed_accuracy: {name!r} has {rate} frames/s and accuracy {accuracy}")
        ax.plot(rate, accuracy, "o", ms=6, color=f"C{k % 10}")
        ax.annotate(name, (rate, accuracy), xytext=(5, 3), textcoords="offset points", fontsize="x-small")
    if rate_hz is not None:
        ax.axvline(rate_hz, color="0.3", ls=":", lw=1.2, label=f"detector rate ({rate_hz:g} Hz)")
    if target is not None:
        ax.axhline(target, color="0.3", ls="--", lw=1, label=f"paper's test figure ({target:.2f} %)")
    ax.set_xscale("log")
    # room for the line of the detector's rate and for the labels right of the fastest pipelines
    rates = [rate for rate, _ in points.values()] + ([rate_hz] if rate_hz is not None else [])
    ax.set_xlim(min(rates) / 1.3, max(rates) * 1.8)
    plain = ticker.FuncFormatter(lambda x, _: f"{x:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(ticker.FuncFormatter(
        lambda x, _: f"{x:g}" if f"{x:g}"[0] in "2357" else ""))
    ax.set_xlabel("frames per second (two cores)")
    ax.set_ylabel("test accuracy (%)")
    if rate_hz is not None or target is not None:
        ax.legend(fontsize="small", loc="best")
    return ax


def plot_learning_curves(history, *, axes=None) -> np.ndarray:
    """Loss (left) and accuracy (right) on the training and validation frames per epoch, as DeepFreak's
    Figure 4; dotted lines mark where the learning rate drops.

    Parameters
    ----------
    history : list of dict
        :attr:`diffranb.deepfreak.TrainResult.history` (``epoch``, ``lr``, ``train_loss``, ``val_loss``,
        ``train_accuracy``, ``val_accuracy``).
    axes : two matplotlib Axes, optional

    Returns
    -------
    ndarray of 2 matplotlib Axes
    """
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    epoch = [e["epoch"] for e in history]
    for ax, key, unit in ((axes[0], "loss", "cross-entropy per frame"), (axes[1], "accuracy", "accuracy (%)")):
        scale = 100 if key == "accuracy" else 1
        ax.plot(epoch, [scale * e[f"train_{key}"] for e in history], "o-", ms=3, label="training")
        ax.plot(epoch, [scale * e[f"val_{key}"] for e in history], "s-", ms=3, label="validation")
        for previous, e in zip(history, history[1:]):
            if e["lr"] != previous["lr"]:
                ax.axvline(e["epoch"] - 0.5, color="0.5", ls=":", lw=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize="small")
    return np.asarray(axes)


def plot_attention(frames, maps, panel_labels, *, axes=None, cmap: str = "inferno", alpha: float = 0.55) -> np.ndarray:
    """8-bit frames with a map in [0, 1] laid over them (Grad-CAM, saliency): one panel per frame.

    Parameters
    ----------
    frames : (n, M, N) uint8
    maps : (n, M, N) float in [0, 1]
    panel_labels : sequence of n str
    axes : n matplotlib Axes, optional
    cmap : str
    alpha : float
        Opacity of the map where it is 1 (it fades out towards 0).

    Returns
    -------
    ndarray of matplotlib Axes
    """
    frames, maps = np.asarray(frames), np.asarray(maps, dtype=np.float64)
    if frames.shape != maps.shape:
        raise ValueError(f"frames {frames.shape} and maps {maps.shape}: must have the same shape")
    if axes is None:
        _, axes = plt.subplots(1, len(frames), figsize=(2.6 * len(frames), 2.8), layout="constrained",
                               squeeze=False)
    axes = np.asarray(axes).ravel()
    colours = plt.get_cmap(cmap)
    for ax, frame, m, text in zip(axes, frames, maps, panel_labels):
        ax.imshow(frame, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        overlay = colours(np.clip(m, 0, 1))
        overlay[..., 3] = alpha * np.clip(m, 0, 1)
        ax.imshow(overlay, interpolation="bilinear")
        ax.set_axis_off()
        label_panel(ax, text)
    return axes
