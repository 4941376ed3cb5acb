"""The crystal: unit cell, orientation, size, mosaicity and structure factors.

Reciprocal basis in nanoBragg's default orientation: **a*** = (a*, 0, 0), **b*** = (b* cos γ*, b* sin γ*, 0),
**c*** = (c* cos β*, c*(cos α* − cos β* cos γ*)/sin γ*, 1/(V a* b* sin γ*)); misset angles rotate the
reciprocal vectors about lab x, then y, then z; real-space vectors follow as **a** = V(**b*** × **c***) etc.
Fractional Miller indices of a scattering vector q are h = **a**·q, k = **b**·q, l = **c**·q.

References
----------
D. E. Sands, *Vectors and Tensors in Crystallography* (1982), ch. 4 (reciprocal cell).
A. J. C. Wilson, "The probability distribution of X-ray intensities", Acta Cryst. 2, 318–321 (1949).
https://doi.org/10.1107/S0365110X49000813
B. W. Matthews, "Solvent content of protein crystals", J. Mol. Biol. 33, 491–497 (1968).
https://doi.org/10.1016/0022-2836(68)90205-2
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numba
import numpy as np
from scipy.spatial.transform import Rotation

from . import _validate as v
from .atoms import form_factor

SHAPES = ("square", "round", "gauss", "tophat")
SF_KINDS = ("constant", "table", "wilson")

#: Heavy-atom composition of an average protein (fractions of non-hydrogen atoms), and the volume one
#: such atom occupies in a crystal, Å³: 1.23 Å³/Da (partial specific volume 0.74 cm³/g) × 14.3 Da per
#: heavy atom (110 Da and 7.7 heavy atoms per residue, hydrogens included in the mass).
PROTEIN_COMPOSITION = {"C": 0.63, "N": 0.17, "O": 0.19, "S": 0.01}
PROTEIN_VOLUME_PER_ATOM_A3 = 17.6


@dataclass(frozen=True)
class StructureFactors:
    """Where structure-factor amplitudes |F(hkl)| come from.

    Attributes
    ----------
    kind : {"constant", "table", "wilson"}
        ``constant``: every reflection has ``default_F`` (nanoBragg's ``-default_F``). ``table``: amplitudes
        from ``table`` rows (h, k, l, F), ``default_F`` elsewhere. ``wilson``: random acentric amplitudes with
        Wilson statistics, ⟨|F|²⟩ = Σf²(s)·exp(−2Bs²), drawn once per (seed, h, k, l).
    default_F : float, electrons
    table : tuple of (h, k, l, F) or None
    b_factor_A2 : float, Å²
        Overall isotropic displacement parameter (Wilson only).
    solvent_fraction : float
        Volume fraction of the cell that is solvent; sets the number of protein atoms (Wilson only).
    seed : int
        Seed of the per-reflection draws (Wilson only): the same seed is the same protein.
    """

    kind: str = "constant"
    default_F: float = 100.0  # electrons
    table: tuple | None = None  # rows (h, k, l, F)
    b_factor_A2: float = 20.0  # Å²
    solvent_fraction: float = 0.5  # dimensionless
    seed: int = 0

    def __post_init__(self):
        v.one_of(self, "kind", self.kind, SF_KINDS)
        v.in_range(self, "default_F", self.default_F, 0, 1e9)
        v.in_range(self, "b_factor_A2", self.b_factor_A2, 0, 500)
        v.in_range(self, "solvent_fraction", self.solvent_fraction, 0, 1, hi_open=True)
        v.integer(self, "seed", self.seed, 0)
        if self.kind == "table":
            rows = np.asarray(self.table if self.table is not None else [], dtype=float)
            if rows.ndim != 2 or rows.shape[1] != 4 or len(rows) == 0:
                v.fail(self, "table", self.table, "a non-empty sequence of (h, k, l, F) rows")
            if not np.all(np.isfinite(rows)) or np.any(rows[:, 3] < 0):
                v.fail(self, "table", "…", "finite, with F ≥ 0")


@dataclass(frozen=True)
class Crystal:
    """A crystal: cell, orientation, size in unit cells, shape, mosaicity and structure factors.

    Attributes
    ----------
    cell : (a, b, c, α, β, γ), Å and degrees
    cells_abc : (Na, Nb, Nc)
        Unit cells along each axis of one coherent block (mosaic domain).
    shape : {"square", "round", "gauss", "tophat"}
        Lattice transform: square is the exact parallelepiped (sincg, with fringes); the others are
        nanoBragg's spherically symmetric approximations.
    misset_deg : (rx, ry, rz), degrees
        Rotations of the reciprocal basis about lab x, then y, then z.
    rotation : 3×3 nested tuple or None
        A further rotation matrix applied after the misset (e.g. a uniformly random orientation).
    mosaic_spread_deg : float, degrees
        Mosaic spread: the largest domain rotation in nanoBragg's Monte Carlo model.
    mosaic_domains : int
        Domains drawn by the Monte Carlo model.
    n_blocks : float
        Number of blocks in the crystal (its volume over Na·Nb·Nc·V_cell): the image scales with it.
    structure : StructureFactors
    """

    cell: tuple = (79.1, 79.1, 37.9, 90.0, 90.0, 90.0)  # Å, Å, Å, deg, deg, deg
    cells_abc: tuple = (10, 10, 10)  # unit cells per block edge
    shape: str = "square"
    misset_deg: tuple = (0.0, 0.0, 0.0)  # deg
    rotation: tuple | None = None  # 3×3 rotation matrix
    mosaic_spread_deg: float = 0.0  # deg
    mosaic_domains: int = 1
    n_blocks: float = 1.0  # blocks in the crystal
    structure: StructureFactors = field(default_factory=StructureFactors)

    def __post_init__(self):
        if len(self.cell) != 6:
            v.fail(self, "cell", self.cell, "(a, b, c, alpha, beta, gamma)")
        for name, x in zip(("cell[a]", "cell[b]", "cell[c]"), self.cell[:3]):
            v.in_range(self, name, x, 0, 1e4, lo_open=True)
        for name, x in zip(("cell[alpha]", "cell[beta]", "cell[gamma]"), self.cell[3:]):
            v.in_range(self, name, x, 0, 180, lo_open=True, hi_open=True)
        ca, cb, cg = (math.cos(math.radians(x)) for x in self.cell[3:])
        if 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg <= 1e-12:
            v.fail(self, "cell", self.cell, "angles that make a cell of positive volume")
        if len(self.cells_abc) != 3:
            v.fail(self, "cells_abc", self.cells_abc, "(Na, Nb, Nc)")
        for name, n in zip(("cells_abc[Na]", "cells_abc[Nb]", "cells_abc[Nc]"), self.cells_abc):
            v.in_range(self, name, n, 1, 1e5)
        v.one_of(self, "shape", self.shape, SHAPES)
        if len(self.misset_deg) != 3:
            v.fail(self, "misset_deg", self.misset_deg, "(rx, ry, rz)")
        for x in self.misset_deg:
            v.finite(self, "misset_deg", x)
        if self.rotation is not None:
            m = np.asarray(self.rotation, dtype=float)
            if m.shape != (3, 3) or not np.allclose(m @ m.T, np.eye(3), atol=1e-6) or np.linalg.det(m) < 0:
                v.fail(self, "rotation", self.rotation, "a proper 3×3 rotation matrix")
        v.in_range(self, "mosaic_spread_deg", self.mosaic_spread_deg, 0, 90)
        v.integer(self, "mosaic_domains", self.mosaic_domains, 1, 10**6)
        v.in_range(self, "n_blocks", self.n_blocks, 0, 1e30, lo_open=True)
        if not isinstance(self.structure, StructureFactors):
            v.fail(self, "structure", self.structure, "a StructureFactors")

    @property
    def volume_A3(self) -> float:
        """Unit-cell volume, Å³."""
        return cell_volume(self.cell)

    @property
    def orientation(self) -> np.ndarray:
        """The full rotation U applied to the default reciprocal basis: rotation @ misset."""
        u = misset_matrix(self.misset_deg)
        if self.rotation is not None:
            u = np.asarray(self.rotation, dtype=float) @ u
        return u

    def reciprocal_vectors(self) -> np.ndarray:
        """Oriented reciprocal basis, rows a*, b*, c*, Å⁻¹."""
        return reciprocal_basis(self.cell) @ self.orientation.T

    def real_vectors(self) -> np.ndarray:
        """Oriented real-space basis, rows a, b, c, Å: h = a·q etc."""
        return real_from_reciprocal(self.reciprocal_vectors())


def cell_volume(cell) -> float:
    """Unit-cell volume, Å³, from (a, b, c, α, β, γ) in Å and degrees."""
    a, b, c = cell[:3]
    ca, cb, cg = (math.cos(math.radians(x)) for x in cell[3:])
    return a * b * c * math.sqrt(1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg)


def reciprocal_basis(cell) -> np.ndarray:
    """Reciprocal basis in nanoBragg's default orientation.

    Parameters
    ----------
    cell : (a, b, c, α, β, γ), Å and degrees

    Returns
    -------
    (3, 3) float64, Å⁻¹
        Rows a*, b*, c*.
    """
    a, b, c = cell[:3]
    al, be, ga = (math.radians(x) for x in cell[3:])
    vol = cell_volume(cell)
    a_s = b * c * math.sin(al) / vol
    b_s = a * c * math.sin(be) / vol
    c_s = a * b * math.sin(ga) / vol
    cos_al_s = (math.cos(be) * math.cos(ga) - math.cos(al)) / (math.sin(be) * math.sin(ga))
    cos_be_s = (math.cos(al) * math.cos(ga) - math.cos(be)) / (math.sin(al) * math.sin(ga))
    cos_ga_s = (math.cos(al) * math.cos(be) - math.cos(ga)) / (math.sin(al) * math.sin(be))
    sin_ga_s = math.sqrt(1 - cos_ga_s**2)
    return np.array([
        [a_s, 0.0, 0.0],
        [b_s * cos_ga_s, b_s * sin_ga_s, 0.0],
        [c_s * cos_be_s, c_s * (cos_al_s - cos_be_s * cos_ga_s) / sin_ga_s, 1.0 / (vol * a_s * b_s * sin_ga_s)],
    ])


def real_from_reciprocal(recip: np.ndarray) -> np.ndarray:
    """Real-space basis (rows a, b, c, Å) from reciprocal rows a*, b*, c* (Å⁻¹): a = V(b* × c*) etc."""
    a_s, b_s, c_s = recip
    vol = 1.0 / float(np.dot(a_s, np.cross(b_s, c_s)))
    return vol * np.array([np.cross(b_s, c_s), np.cross(c_s, a_s), np.cross(a_s, b_s)])


def misset_matrix(angles_deg) -> np.ndarray:
    """Rotation about lab x, then y, then z (right-handed, active): R = Rz·Ry·Rx.

    Parameters
    ----------
    angles_deg : (rx, ry, rz), degrees

    Returns
    -------
    (3, 3) float64
    """
    return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation drawn uniformly from SO(3) (Haar measure), as a 3×3 matrix.

    Unlike random misset angles, which crowd orientations near the poles, every orientation is equally
    likely.
    """
    return Rotation.random(rng=rng).as_matrix()


def mosaic_rotations(spread_deg: float, n_domains: int, rng: np.random.Generator) -> np.ndarray:
    """Domain rotations for nanoBragg's Monte Carlo mosaic model.

    Each domain turns by angle ``spread·(1 − r²)^{1/3}`` (r uniform on [−1, 1]) about an axis uniform on the
    sphere, so never by more than the spread; domain 0 is left unrotated.

    Parameters
    ----------
    spread_deg : float, degrees
    n_domains : int
    rng : numpy.random.Generator

    Returns
    -------
    (n_domains, 3, 3) float64
    """
    axes = rng.normal(size=(n_domains, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    r = rng.uniform(-1.0, 1.0, n_domains)
    angles = math.radians(spread_deg) * np.cbrt(1.0 - r * r)
    angles[0] = 0.0
    return Rotation.from_rotvec(axes * angles[:, None]).as_matrix()


def mosaic_angle_rms_rad(spread_deg: float) -> float:
    """RMS of one Cartesian component of the Monte Carlo model's rotation vector, radians.

    For angle θ = spread·(1 − r²)^{1/3} about an isotropic axis, each component has variance ⟨θ²⟩/3 with
    ⟨(1 − r²)^{2/3}⟩ = ½·B(½, 5/3) for r uniform on [−1, 1]: this is what the fast model uses, so the two
    models smear spots by the same second moment.
    """
    from scipy.special import beta

    mean_sq = 0.5 * beta(0.5, 5.0 / 3.0)
    return math.radians(spread_deg) * math.sqrt(mean_sq / 3.0)


def atoms_per_cell(cell, solvent_fraction: float) -> float:
    """Number of protein heavy atoms in one unit cell (Matthews-style estimate)."""
    return cell_volume(cell) * (1.0 - solvent_fraction) / PROTEIN_VOLUME_PER_ATOM_A3


def wilson_mean_intensity(stol, cell, b_factor_A2: float, solvent_fraction: float = 0.5):
    """Expected |F|² at sinθ/λ: Σf²(s)·exp(−2Bs²) over the protein atoms of one cell.

    Parameters
    ----------
    stol : float or array, Å⁻¹
    cell : (a, b, c, α, β, γ)
    b_factor_A2 : float, Å²
    solvent_fraction : float

    Returns
    -------
    float or array, electrons²
    """
    s = np.asarray(stol, dtype=float)
    n = atoms_per_cell(cell, solvent_fraction)
    sum_f2 = sum(frac * form_factor(el, s) ** 2 for el, frac in PROTEIN_COMPOSITION.items()) * n
    return sum_f2 * np.exp(-2.0 * b_factor_A2 * s * s)


@numba.njit(cache=True, inline="always")
def _splitmix64(x):
    """The splitmix64 finaliser on a uint64: a fast, well-mixed counter-based hash."""
    x = x + numba.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> numba.uint64(30))) * numba.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> numba.uint64(27))) * numba.uint64(0x94D049BB133111EB)
    return x ^ (x >> numba.uint64(31))


@numba.njit(cache=True)
def hkl_uniform(seed, h, k, l):
    """A uniform number in (0, 1) for each (seed, h, k, l), the same whatever else is drawn.

    Per-reflection random amplitudes use it, so that a crystal keeps its intensities when its
    orientation, size or the detector change, and no reflection's draw depends on which others were seen.
    """
    key = _splitmix64(numba.uint64(seed))
    for idx in (h, k, l):
        key = _splitmix64(key ^ numba.uint64(numba.int64(idx) + 0x632BE59BD9B4E019))
    return (numba.float64(key >> numba.uint64(11)) + 0.5) / 9007199254740992.0


SF_CONSTANT, SF_TABLE, SF_WILSON = 0, 1, 2

#: Step of the sinθ/λ table of Wilson means handed to the kernels, Å⁻¹.
STOL_STEP = 1e-3


class AmplitudeSource(NamedTuple):
    """Everything a kernel needs to look up |F(hkl)| (see :func:`structure_amplitude`)."""

    mode: int
    default_F: float
    grid: np.ndarray  # (2·hm+1, 2·km+1, 2·lm+1) for tables, else (1, 1, 1)
    seed: int
    wilson_mean: np.ndarray  # ⟨|F|²⟩ at stol = i·STOL_STEP


def amplitude_source(crystal: Crystal, stol_max: float = 1.0) -> AmplitudeSource:
    """Package a crystal's structure factors for the numba kernels.

    Parameters
    ----------
    crystal : Crystal
    stol_max : float, Å⁻¹
        Largest sinθ/λ the kernel will ask about (Wilson table range).
    """
    sf = crystal.structure
    grid = np.zeros((1, 1, 1))
    mean = np.zeros(1)
    if sf.kind == "table":
        rows = np.asarray(sf.table, dtype=float)
        hkl = rows[:, :3].astype(np.int64)
        hm, km, lm = (int(x) for x in np.abs(hkl).max(axis=0))
        grid = np.full((2 * hm + 1, 2 * km + 1, 2 * lm + 1), sf.default_F)
        grid[hkl[:, 0] + hm, hkl[:, 1] + km, hkl[:, 2] + lm] = rows[:, 3]
    elif sf.kind == "wilson":
        stol = np.arange(int(stol_max / STOL_STEP) + 2) * STOL_STEP
        mean = wilson_mean_intensity(stol, crystal.cell, sf.b_factor_A2, sf.solvent_fraction)
    mode = {"constant": SF_CONSTANT, "table": SF_TABLE, "wilson": SF_WILSON}[sf.kind]
    return AmplitudeSource(mode, float(sf.default_F), grid, int(sf.seed), mean)


@numba.njit(cache=True)
def structure_amplitude(h, k, l, stol, mode, default_F, grid, seed, wilson_mean):
    """|F| of reflection (h, k, l) (integers) at sinθ/λ ``stol`` (Å⁻¹), in electrons.

    Constant: ``default_F``. Table: the grid value, ``default_F`` outside it. Wilson: an acentric draw,
    |F|² = −⟨|F|²⟩(s)·ln u with u = :func:`hkl_uniform`, i.e. exponentially distributed intensities
    (Wilson 1949); F000 is zero (it lies under the beamstop and is not Bragg scattering).
    """
    if mode == SF_CONSTANT:
        return default_F
    if mode == SF_TABLE:
        hm = (grid.shape[0] - 1) // 2
        km = (grid.shape[1] - 1) // 2
        lm = (grid.shape[2] - 1) // 2
        if abs(h) <= hm and abs(k) <= km and abs(l) <= lm:
            return grid[h + hm, k + km, l + lm]
        return default_F
    if h == 0 and k == 0 and l == 0:
        return 0.0
    x = stol / STOL_STEP
    i = int(x)
    if i >= wilson_mean.shape[0] - 1:
        return 0.0
    t = x - i
    mean = wilson_mean[i] * (1.0 - t) + wilson_mean[i + 1] * t
    return math.sqrt(-mean * math.log(hkl_uniform(seed, h, k, l)))
