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
from matplotlib import colors
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
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image.shape={image.shape}: must be 2-D (slow, fast)")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5), layout="constrained")
    vmax = default_vmax(image) if vmax is None else vmax
    im = ax.imshow(image, cmap=cmap, norm=norm(scale, vmax), interpolation="nearest", origin="upper", **kw)
    if beam_center is not None:
        slow, fast = beam_center
        ax.plot([fast], [slow], marker="+", markersize=12, color="tab:red", linestyle="none")
    ax.set_xlabel("fast (px)")
    ax.set_ylabel("slow (px)")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label=unit)
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
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values.shape={values.shape}: must be 2-D (slow, fast)")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5), layout="constrained")
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", origin="upper", **kw)
    ax.set_xlabel("fast (px)")
    ax.set_ylabel("slow (px)")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label=unit)
    return ax


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
