"""Lattice transforms: how strongly a block of Na × Nb × Nc unit cells scatters at fractional (h, k, l).

``square`` is the exact transform of a parallelepiped, F_latt = sincg(πh, Na)·sincg(πk, Nb)·sincg(πl, Nc)
with sincg(x, N) = sin(Nx)/sin(x), which peaks at N on every integer and has fringes between. ``round``,
``gauss`` and ``tophat`` are nanoBragg's spherically symmetric stand-ins, functions of the scaled distance to
the nearest reciprocal lattice point, r² = Σ (Δh·N)²:

- round:  F = N³ · 0.723601254558268 · sinc3(π r),  sinc3(x) = 3(sin x / x − cos x)/x²
- gauss:  F = N³ · exp(−r² / 0.63)
- tophat: F = N³ where r² < 0.3969, else 0

Integrated over one reciprocal cell, F_latt² gives Na·Nb·Nc exactly for ``square``, 0.984 of it for
``gauss`` and 1.047 for ``tophat``; ``round`` peaks at 0.7236·N³ (the square root of the sphere-to-cube
volume ratio).

References
----------
J. M. Holton, K. A. Frankel, Acta Cryst. D66, 393–408 (2010). https://doi.org/10.1107/S0907444910007262
B. E. Warren, *X-ray Diffraction* (1969), §3.3 (the interference function).
"""

import math

import numba

SHAPE_CODES = {"square": 0, "round": 1, "gauss": 2, "tophat": 3}


@numba.njit(cache=True, inline="always")
def sincg(x, n):
    """sin(N x)/sin(x): the one-dimensional interference function, N at every multiple of π.

    The argument is first reduced to the nearest multiple of π, which leaves sincg² unchanged for whole N
    and keeps full precision next to the peaks.

    Parameters
    ----------
    x : float, radians
    n : float
        Number of unit cells along the axis.

    Returns
    -------
    float
    """
    x = x - math.pi * math.floor(x / math.pi + 0.5)
    if x == 0.0:
        return n
    return math.sin(n * x) / math.sin(x)


@numba.njit(cache=True, inline="always")
def sinc3(x):
    """3(sin x / x − cos x)/x², the transform of a uniform sphere (1 at x = 0)."""
    if abs(x) < 1e-4:
        return 1.0 - x * x / 10.0
    return 3.0 * (math.sin(x) / x - math.cos(x)) / (x * x)


@numba.njit(cache=True, inline="always")
def lattice_factor(h, k, l, na, nb, nc, shape):
    """Lattice transform F_latt at fractional Miller indices (h, k, l).

    Parameters
    ----------
    h, k, l : float
        Fractional Miller indices.
    na, nb, nc : float
        Unit cells per block edge.
    shape : int
        Code from :data:`SHAPE_CODES`.

    Returns
    -------
    float
        F_latt (its square is the intensity factor).
    """
    if shape == 0:
        f = 1.0
        if na > 1.0:
            f *= sincg(math.pi * h, na)
        if nb > 1.0:
            f *= sincg(math.pi * k, nb)
        if nc > 1.0:
            f *= sincg(math.pi * l, nc)
        return f
    dh = h - math.floor(h + 0.5)
    dk = k - math.floor(k + 0.5)
    dl = l - math.floor(l + 0.5)
    r2 = dh * dh * na * na + dk * dk * nb * nb + dl * dl * nc * nc
    n3 = na * nb * nc
    if shape == 1:
        return n3 * 0.723601254558268 * sinc3(math.pi * math.sqrt(r2))
    if shape == 2:
        return n3 * math.exp(-r2 / 0.63)
    return n3 if r2 < 0.3969 else 0.0
