"""Amorphous and powder background: liquid water, air and hexagonal ice (Ih).

Every material is described by what one of its molecules scatters, F²(s) in electrons² as a function of
s = sinθ/λ (Å⁻¹), coherent plus incoherent (Compton), and the image is

    I = r_e² · Φ · N_mol · F²(s) · P · Ω,   N_mol = thickness · (beam size)² · ρ · N_A / MW,

the sample being clipped to the square beam (nanoBragg's ``nonBragg`` model). The curves come from
physics and published structural facts, not from a measured curve:

- **water** (298 K): molecular form factor (O + 2H with intramolecular Debye terms and modified atomic
  form factors) with the centre–centre structure factor S_OO(Q), the Fourier transform of a model
  g_OO(r) drawn through the published extrema, which meets the compressibility limit
  S(0) = ρ k_B T κ_T at long wavelength;
- **air** (293.15 K, 1 atm): N₂, O₂ and Ar molecules with S(Q) = 1 (an ideal gas);
- **ice Ih** powder: Bragg reflections of the hexagonal cell, orientation-averaged onto rings whose width
  follows the crystallite size (Scherrer).

References
----------
J. M. Holton, K. A. Frankel, Acta Cryst. D66, 393–408 (2010). https://doi.org/10.1107/S0907444910007262
(the ``nonBragg`` background model).
A. K. Soper, ISRN Phys. Chem. 2013, 279463 (2013). https://doi.org/10.1155/2013/279463 (g_OO of water).
L. B. Skinner et al., "Benchmark oxygen-oxygen pair-distribution function of ambient water from x-ray
diffraction measurements with a wide Q-range", J. Chem. Phys. 138, 074506 (2013).
https://doi.org/10.1063/1.4790861
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.integrate import cumulative_trapezoid
from scipy.interpolate import CubicSpline, PchipInterpolator
from scipy.special import ndtr

from . import _validate as v
from .atoms import form_factor, incoherent
from .constants import N_AVOGADRO, R_E_SQ_M2
from .geometry import Beam, Detector, pixel_factor, pixel_positions_mm, stol_map

MATERIALS = ("water", "air", "ice")

#: Boltzmann constant, J/K (exact in SI 2019).
K_BOLTZMANN = 1.380649e-23

#: The scattering tables run on 0 ≤ sinθ/λ ≤ STOL_MAX, Å⁻¹ (the Cromer–Mann range), in steps of STOL_STEP:
#: fine enough to follow a 50 nm crystallite's ice ring (FWHM ≈ 1e-3 Å⁻¹ in sinθ/λ) with ~20 points.
STOL_MAX = 2.0
STOL_STEP = 5e-5

# ---------------------------------------------------------------------------------------------------------
# Liquid water
# ---------------------------------------------------------------------------------------------------------

WATER_DENSITY_G_CM3 = 1.0  # g/cm³
WATER_MW = 18.015  # g/mol
WATER_TEMPERATURE_K = 298.15  # K, that of the g_OO(r) below
#: Isothermal compressibility of water at 25 °C, 1/Pa (Kell 1975).
WATER_KAPPA_T_PER_PA = 4.524e-10
#: Intramolecular geometry: O–H bond, Å, and H–O–H angle, degrees.
WATER_R_OH_A = 0.96
WATER_HOH_DEG = 104.5
#: Modified atomic form factors f' = f·[1 + α exp(−Q²/2δ²)], the form of Sorenson et al. (2000), with the
#: values commonly used for ambient water: the bonds pull valence charge from H to O, which shows at low Q
#: only; α_H = −4α_O keeps the molecule neutral. δ in Å⁻¹ (Q = 4πs).
MAFF_ALPHA_O = 0.1075
MAFF_ALPHA_H = -4 * MAFF_ALPHA_O
MAFF_DELTA_INV_A = 2.01
#: g_OO(r) of ambient water (298 K) as published by Soper (2013): the first maximum (r in Å, g), the r.m.s.
#: width of the first peak (its half-height points lie at 2.59 and 3.07 Å), and the following extrema,
#: with g = 1 beyond the last. Skinner et al.'s (2013) x-ray benchmark puts the first maximum at the same
#: 2.80 Å, 3 % higher.
GOO_FIRST_MAX = (2.79, 2.495)
GOO_FIRST_PEAK_SIGMA_A = 0.175
GOO_EXTREMA = ((3.39, 0.800), (4.53, 1.125), (5.58, 0.883), (6.75, 1.061), (7.89, 0.976), (8.85, 1.005),
               (9.69, 0.998), (10.59, 1.004), (11.70, 0.997), (13.0, 1.0))
#: Below the main rise, S(Q) hangs on small imbalances between the shells of g(r), which a curve drawn
#: through its extrema does not get right (its transform swings by ±0.5 at Q < 1 Å⁻¹). Below Q_join (Å⁻¹),
#: where water's S(Q) has risen about halfway to its first maximum, S rises instead monotonically from the
#: thermodynamic limit, S(0) + [S(Q_j) − S(0)]·(Q/Q_j)^p, with p matching the slope at Q_j.
S_JOIN_Q_INV_A = 1.6
_R_MAX_A = 15.0  # Å: h = 0 beyond the last extremum, so the transform needs no window
_R_STEP_A = 0.005  # Å: ≥ 50 points per period of sin(Qr) up to Q = 4π·STOL_MAX


def _water_number_density_A3() -> float:
    """Molecules per Å³ of water at :data:`WATER_DENSITY_G_CM3`."""
    return WATER_DENSITY_G_CM3 / WATER_MW * N_AVOGADRO * 1e-24


def water_S0() -> float:
    """Long-wavelength limit of water's structure factor, S(0) = ρ k_B T κ_T (dimensionless).

    The compressibility sum rule: density fluctuations of a liquid in equilibrium.

    References
    ----------
    G. S. Kell, "Density, thermal expansivity, and compressibility of liquid water from 0 °C to 150 °C",
    J. Chem. Eng. Data 20, 97–105 (1975). https://doi.org/10.1021/je60064a005

    Examples
    --------
    >>> round(water_S0(), 3)
    0.062
    """
    return _water_number_density_A3() * 1e30 * K_BOLTZMANN * WATER_TEMPERATURE_K * WATER_KAPPA_T_PER_PA


def _g_oo(r):
    """g_OO(r): a Gaussian first peak, then a shape-preserving cubic through the later extrema.

    The first peak rises out of the excluded core as a Gaussian and falls onto the first-minimum level;
    beyond the first minimum the cubic (PCHIP) is flat at every extremum, as g(r) is.
    """
    r1, g1 = GOO_FIRST_MAX
    rm, gm = GOO_EXTREMA[0]
    r = np.asarray(r, dtype=float)
    g = np.empty_like(r)
    rise, fall, outer = r < r1, (r >= r1) & (r < rm), r >= rm
    g[rise] = g1 * np.exp(-0.5 * ((r[rise] - r1) / GOO_FIRST_PEAK_SIGMA_A) ** 2)
    g[fall] = gm + (g1 - gm) * np.exp(-0.5 * ((r[fall] - r1) / GOO_FIRST_PEAK_SIGMA_A) ** 2)
    knots = np.array(GOO_EXTREMA)
    g[outer] = PchipInterpolator(knots[:, 0], knots[:, 1])(np.minimum(r[outer], knots[-1, 0]))
    return g


def _r_grid():
    return np.arange(0.0, _R_MAX_A + _R_STEP_A / 2, _R_STEP_A)


def water_g_OO(r_A):
    """Oxygen–oxygen pair distribution function g_OO(r) of liquid water at 298 K.

    Parameters
    ----------
    r_A : float or array, Å

    Returns
    -------
    g : float or array, dimensionless (→ 1 at large r, 0 inside the excluded core)

    References
    ----------
    A. K. Soper, "The radial distribution functions of water as derived from radiation total scattering
    experiments: is there anything we can say for sure?", ISRN Phys. Chem. 2013, 279463 (2013).
    https://doi.org/10.1155/2013/279463
    L. B. Skinner et al., J. Chem. Phys. 138, 074506 (2013). https://doi.org/10.1063/1.4790861
    """
    g = _g_oo(np.atleast_1d(np.asarray(r_A, dtype=float)))
    return g if np.ndim(r_A) else float(g[0])


@functools.cache
def _water_S_spline():
    r = _r_grid()
    h = _g_oo(r) - 1.0
    weight = 4.0 * np.pi * _water_number_density_A3() * r * r * h
    Q = np.arange(0.0, 4.0 * np.pi * STOL_MAX + 0.02, 0.01)
    S = np.empty_like(Q)
    for start in range(0, len(Q), 256):  # chunks keep the (Q, r) matrix to a few MB
        q = Q[start:start + 256, None]
        S[start:start + 256] = 1.0 + np.trapezoid(weight * np.sinc(q * r / np.pi), r, axis=1)
    transform = CubicSpline(Q, S)
    S0, q_j = water_S0(), S_JOIN_Q_INV_A
    S_j, slope_j = float(transform(q_j)), float(transform(q_j, 1))
    power = max(2.0, q_j * slope_j / (S_j - S0))
    low = Q < q_j
    S[low] = S0 + (S_j - S0) * (Q[low] / q_j) ** power
    return CubicSpline(Q, S)


def water_S_OO(stol):
    """Oxygen–oxygen (molecular centre) structure factor S_OO of liquid water at 298 K.

    S(Q) = 1 + 4πρ ∫ r² [g_OO(r) − 1] sin(Qr)/(Qr) dr, evaluated numerically on :func:`water_g_OO`,
    with Q = 4π sinθ/λ, joined below Q = 1.6 Å⁻¹ to the compressibility limit S(0) = ρ k_B T κ_T
    (see :data:`S_JOIN_Q_INV_A`).

    Parameters
    ----------
    stol : float or array, Å⁻¹
        sinθ/λ.

    Returns
    -------
    S : float or array, dimensionless; S(0) = :func:`water_S0`, S → 1 at high angle.
    """
    S = _water_S_spline()(4.0 * np.pi * np.asarray(stol, dtype=float))
    return S if np.ndim(S) else float(S)


def _maff(element, stol):
    """Modified atomic form factor of O or H in water, electrons."""
    Q = 4.0 * np.pi * np.asarray(stol, dtype=float)
    alpha = MAFF_ALPHA_O if element == "O" else MAFF_ALPHA_H
    return form_factor(element, stol) * (1.0 + alpha * np.exp(-0.5 * (Q / MAFF_DELTA_INV_A) ** 2))


def _j0(x):
    """Spherical Bessel function j₀(x) = sin(x)/x."""
    return np.sinc(np.asarray(x) / np.pi)


def water_F2(stol, *, compton=True):
    """X-ray scattering of liquid water per molecule, F²(sinθ/λ), at 298 K and 1 g/cm³.

    In the decoupling approximation for a liquid of rigid, orientationally uncorrelated molecules,
    F² = ⟨|F_mol|²⟩ + |⟨F_mol⟩|²·[S_OO(Q) − 1] + S_inc, with (Q = 4π sinθ/λ, O–H 0.96 Å, H–H 1.52 Å)

    - ⟨|F_mol|²⟩ = f_O² + 2f_H² + 4 f_O f_H j₀(Q r_OH) + 2 f_H² j₀(Q r_HH) (Debye, one molecule),
    - ⟨F_mol⟩ = f_O + 2 f_H j₀(Q r_OH), the orientation-averaged amplitude about the oxygen,
    - S_inc = S_O + 2 S_H, the Compton scattering (see :func:`diffranb.sim.atoms.incoherent`),

    and modified atomic form factors for O and H (Sorenson et al. 2000). At s → 0 it tends to
    10²·S(0) ≈ 6 electrons²; the main peak sits at s ≈ 0.16 Å⁻¹ (Q ≈ 2.0 Å⁻¹), with the shoulder of the
    tetrahedral second shell near s ≈ 0.22 Å⁻¹.

    Parameters
    ----------
    stol : float or array, Å⁻¹
        sinθ/λ, 0 ≤ s ≤ 2.
    compton : bool
        Include the incoherent part.

    Returns
    -------
    F2 : float or array, electrons² per molecule

    References
    ----------
    J. M. Sorenson, G. Hura, R. M. Glaeser, T. Head-Gordon, "What can x-ray scattering tell us about the
    radial distribution functions of water?", J. Chem. Phys. 113, 9149–9161 (2000).
    https://doi.org/10.1063/1.1319615
    L. B. Skinner et al., J. Chem. Phys. 138, 074506 (2013). https://doi.org/10.1063/1.4790861
    G. Hura et al., "A high-quality x-ray scattering experiment on liquid water at ambient conditions",
    J. Chem. Phys. 113, 9140–9148 (2000). https://doi.org/10.1063/1.1319614

    Examples
    --------
    >>> s = np.linspace(0.05, 0.4, 351)
    >>> round(float(s[np.argmax(water_F2(s))]), 2)
    0.16
    """
    s = np.asarray(stol, dtype=float)
    Q = 4.0 * np.pi * s
    r_hh = 2.0 * WATER_R_OH_A * math.sin(math.radians(WATER_HOH_DEG) / 2.0)
    fO, fH = _maff("O", s), _maff("H", s)
    j_oh, j_hh = _j0(Q * WATER_R_OH_A), _j0(Q * r_hh)
    self_term = fO**2 + 2.0 * fH**2 + 4.0 * fO * fH * j_oh + 2.0 * fH**2 * j_hh
    mean_amplitude = fO + 2.0 * fH * j_oh
    F2 = self_term + mean_amplitude**2 * (water_S_OO(s) - 1.0)
    if compton:
        F2 = F2 + incoherent("O", s) + 2.0 * incoherent("H", s)
    return F2 if np.ndim(F2) else float(F2)


# ---------------------------------------------------------------------------------------------------------
# Air
# ---------------------------------------------------------------------------------------------------------

AIR_TEMPERATURE_K = 293.15  # K
AIR_PRESSURE_PA = 101325.0  # Pa
#: Dry air by mole fraction (CO₂ and the rest, 0.04 %, left out) and molar masses, g/mol.
AIR_COMPOSITION = {"N2": 0.78084, "O2": 0.20946, "Ar": 0.00934}
AIR_MOLAR_MASS = {"N2": 28.014, "O2": 31.998, "Ar": 39.948}
#: Equilibrium bond lengths, Å (Huber & Herzberg 1979).
BOND_LENGTH_A = {"N2": 1.0977, "O2": 1.2075}


def air_number_density_per_m3() -> float:
    """Molecules per m³ of air at 293.15 K and 1 atm, from the ideal gas law n = p/(k_B T)."""
    return AIR_PRESSURE_PA / (K_BOLTZMANN * AIR_TEMPERATURE_K)


def air_molecular_weight() -> float:
    """Mean molar mass of dry air, g/mol (≈ 28.96)."""
    return sum(x * AIR_MOLAR_MASS[m] for m, x in AIR_COMPOSITION.items()) / sum(AIR_COMPOSITION.values())


def air_density_g_cm3() -> float:
    """Density of air at 293.15 K and 1 atm, g/cm³ (≈ 1.2e-3)."""
    return air_number_density_per_m3() * 1e-6 * air_molecular_weight() / N_AVOGADRO


def air_F2(stol, *, compton=True):
    """X-ray scattering of air per molecule (mole-fraction average of N₂, O₂, Ar), electrons².

    A dilute gas has no intermolecular order (S = 1), so each molecule scatters on its own: for a
    homonuclear diatomic of bond length d, orientation-averaged, 2f²[1 + j₀(Qd)] + 2S_inc (Q = 4π sinθ/λ);
    for argon f² + S_inc. Forward, the coherent part tends to the square of the electrons per molecule.

    Parameters
    ----------
    stol : float or array, Å⁻¹
        sinθ/λ, 0 ≤ s ≤ 2.
    compton : bool
        Include the incoherent part.

    Returns
    -------
    F2 : float or array, electrons² per molecule

    References
    ----------
    K. P. Huber, G. Herzberg, *Constants of Diatomic Molecules* (1979).
    https://doi.org/10.1007/978-1-4757-0961-2
    J. H. Hubbell et al., J. Phys. Chem. Ref. Data 4, 471–538 (1975). https://doi.org/10.1063/1.555523

    Examples
    --------
    >>> round(air_F2(0.0))  # 0.781·14² + 0.209·16² + 0.009·18²
    210
    """
    s = np.asarray(stol, dtype=float)
    Q = 4.0 * np.pi * s
    total = np.zeros_like(s)
    for molecule, x in AIR_COMPOSITION.items():
        if molecule == "Ar":
            part = form_factor("Ar", s) ** 2 + (incoherent("Ar", s) if compton else 0.0)
        else:
            atom = molecule[0]
            part = 2.0 * form_factor(atom, s) ** 2 * (1.0 + _j0(Q * BOND_LENGTH_A[molecule]))
            if compton:
                part = part + 2.0 * incoherent(atom, s)
        total = total + x * part
    F2 = total / sum(AIR_COMPOSITION.values())
    return F2 if np.ndim(F2) else float(F2)


# ---------------------------------------------------------------------------------------------------------
# Hexagonal ice Ih
# ---------------------------------------------------------------------------------------------------------

ICE_DENSITY_G_CM3 = 0.917  # g/cm³
#: Cell of ice Ih near 100 K, Å (Röttger et al. 1994), space group P6₃/mmc, Z = 4 molecules per cell.
ICE_A_A = 4.497
ICE_C_A = 7.322
ICE_Z = 4
#: Oxygen on Wyckoff 4f (1/3, 2/3, z); z = 1/16 makes the tetrahedra regular.
ICE_Z_O = 0.0625
#: Hydrogens: one per O···O bond, 1.0 Å from either oxygen with occupancy ½ (Pauling's disorder).
ICE_R_OH_A = 1.0
#: Scherrer constant K: ring FWHM in |q| = 2 sinθ/λ is K / (crystallite size).
SCHERRER_K = 0.9


def _ice_sites():
    """Fractional coordinates (n, 3) and (element, occupancy) of the atoms in one ice Ih cell."""
    z = ICE_Z_O
    oxygens = np.array([(1 / 3, 2 / 3, z), (2 / 3, 1 / 3, z + 0.5), (2 / 3, 1 / 3, -z), (1 / 3, 2 / 3, 0.5 - z)])
    a, c = ICE_A_A, ICE_C_A
    cart = np.array([[a, 0.0, 0.0], [-a / 2, a * math.sqrt(3) / 2, 0.0], [0.0, 0.0, c]])  # rows: a, b, c
    shifts = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
    hydrogens = []
    for o in oxygens:
        for other in oxygens:
            for t in shifts:
                d = (other + t - o) @ cart
                dist = np.linalg.norm(d)
                if 0.1 < dist < 3.0:  # the four hydrogen-bonded neighbours, 2.75 Å away
                    hydrogens.append(o + (ICE_R_OH_A / dist) * (d @ np.linalg.inv(cart)))
    frac = np.vstack([oxygens, np.array(hydrogens)]) % 1.0
    kinds = [("O", 1.0)] * len(oxygens) + [("H", 0.5)] * len(hydrogens)
    return frac, kinds


@functools.cache
def _ice_reflections(stol_max):
    a, c = ICE_A_A, ICE_C_A
    q_max = 2.0 * stol_max
    hmax, lmax = int(q_max * a) + 1, int(q_max * c) + 1
    h, k, l = np.meshgrid(np.arange(-hmax, hmax + 1), np.arange(-hmax, hmax + 1), np.arange(-lmax, lmax + 1),
                          indexing="ij")
    h, k, l = h.ravel(), k.ravel(), l.ravel()
    q = np.sqrt(4.0 / 3.0 * (h * h + h * k + k * k) / a**2 + (l / c) ** 2)  # |G| = 1/d, Å⁻¹
    keep = (q > 0) & (q <= q_max)
    h, k, l, q = h[keep], k[keep], l[keep], q[keep]
    frac, kinds = _ice_sites()
    phase = np.exp(2j * np.pi * (np.outer(h, frac[:, 0]) + np.outer(k, frac[:, 1]) + np.outer(l, frac[:, 2])))
    F = np.zeros(len(q), dtype=complex)
    for n, (element, occupancy) in enumerate(kinds):
        F += occupancy * form_factor(element, q / 2.0) * phase[:, n]
    F2 = np.abs(F) ** 2
    strong = F2 > 1e-6 * F2.max()  # systematic absences, up to rounding
    d = np.round(1.0 / q[strong], 9)
    d_unique, inverse = np.unique(d, return_inverse=True)
    order = np.argsort(-d_unique)
    multiplicity = np.bincount(inverse)[order]
    F2_ring = (np.bincount(inverse, weights=F2[strong]) / np.bincount(inverse))[order]
    hs, ks, ls = h[strong], k[strong], l[strong]
    last = np.lexsort((ls, ks, hs, inverse))  # within each ring, the largest (h, k, l) comes last
    ends = np.cumsum(np.bincount(inverse)) - 1
    hkl = np.column_stack([hs, ks, ls])[last[ends]]
    return d_unique[order], multiplicity, F2_ring, hkl[order]


def ice_reflections(stol_max=1.0):
    """Powder rings of ice Ih: d-spacings, multiplicities and |F|² of its Bragg reflections.

    Structure factors F(hkl) = Σⱼ occⱼ fⱼ exp(2πi(hx + ky + lz)) over the 4 oxygens and 16 half-occupied
    hydrogen sites of the cell (static lattice: no Debye–Waller factor), with the hexagonal metric
    1/d² = 4(h² + hk + k²)/(3a²) + l²/c². Reflections of equal d (Friedel pairs included) are merged.

    Parameters
    ----------
    stol_max : float, Å⁻¹
        Largest sinθ/λ = 1/(2d) to list.

    Returns
    -------
    d_A : (n,) float64, Å
        Spacings, largest first.
    multiplicity : (n,) int64
        Reflections on each ring.
    F2 : (n,) float64, electrons²
        |F|² of one reflection of the ring (the mean, where symmetry-unrelated ones coincide).
    hkl : (n, 3) int64
        One representative index per ring.

    References
    ----------
    C. Röttger et al., "Lattice constants and thermal expansion of H₂O and D₂O ice Ih between 10 and
    265 K", Acta Cryst. B50, 644–648 (1994). https://doi.org/10.1107/S0108768194004933
    L. Pauling, "The structure and entropy of ice and of other crystals with some randomness of atomic
    arrangement", J. Am. Chem. Soc. 57, 2680–2684 (1935). https://doi.org/10.1021/ja01315a102

    Examples
    --------
    >>> d, m, F2, hkl = ice_reflections(0.2)
    >>> [round(float(x), 2) for x in d[:3]]
    [3.89, 3.66, 3.44]
    """
    d, m, F2, hkl = _ice_reflections(float(stol_max))
    return d.copy(), m.copy(), F2.copy(), hkl.copy()


def _ice_ring_weights(stol_max):
    """Ring radii |G| (Å⁻¹) and per-molecule weights Σ|F_G|² / (Z·V_cell·4π|G|²) (electrons²·Å⁻¹)."""
    d, m, F2, _ = _ice_reflections(stol_max)
    G = 1.0 / d
    v_cell = math.sqrt(3.0) / 2.0 * ICE_A_A**2 * ICE_C_A
    return G, m * F2 / (ICE_Z * v_cell * 4.0 * np.pi * G * G)


def _ice_ring_sigma(crystallite_nm):
    """Gaussian r.m.s. width of a ring in |q| (Å⁻¹) for a crystallite size in nm (Scherrer)."""
    fwhm = SCHERRER_K / (10.0 * crystallite_nm)
    return fwhm / math.sqrt(8.0 * math.log(2.0))


def _ice_window(G, sigma, stol):
    """Index ranges of ``stol`` (sorted) within ±8σ of each ring."""
    lo = np.searchsorted(stol, (G - 8.0 * sigma) / 2.0)
    hi = np.searchsorted(stol, (G + 8.0 * sigma) / 2.0, side="right")
    return lo, hi


def ice_F2(stol, *, crystallite_nm=50.0, compton=True):
    """X-ray scattering of ice Ih powder per molecule, F²(sinθ/λ), electrons².

    Orientation-averaging the lattice transform of a crystal of N_cells cells spreads reflection G's
    integrated weight (N_cells/V_cell)·|F_G|² evenly over the sphere |q| = |G|, so per molecule

        F²(q) = Σ_G |F_G|² / (Z·V_cell·4π|G|²) · g(|q| − |G|) + S_inc,   |q| = 2 sinθ/λ,

    summed over every reflection (multiplicity automatic), with g a unit-area Gaussian whose FWHM
    K/L (Scherrer, K = 0.9) follows the crystallite size L. Rings sit where Bragg's law puts them,
    sinθ/λ = 1/(2d).

    Parameters
    ----------
    stol : float or array, Å⁻¹
        sinθ/λ, 0 ≤ s ≤ 2.
    crystallite_nm : float, nm
        Coherent domain size.
    compton : bool
        Include the incoherent part (S_O + 2S_H).

    Returns
    -------
    F2 : float or array, electrons² per molecule

    References
    ----------
    J. I. Langford, A. J. C. Wilson, "Scherrer after sixty years: a survey and some new results in the
    determination of crystallite size", J. Appl. Cryst. 11, 102–113 (1978).
    https://doi.org/10.1107/S0021889878012844
    """
    s = np.asarray(stol, dtype=float)
    flat = np.atleast_1d(s).ravel()
    order = np.argsort(flat)
    sorted_s = flat[order]
    G, weight = _ice_ring_weights(STOL_MAX)
    sigma = _ice_ring_sigma(crystallite_nm)
    lo, hi = _ice_window(G, sigma, sorted_s)
    coherent = np.zeros_like(sorted_s)
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    for g, w, i, j in zip(G, weight, lo, hi):
        if j > i:
            coherent[i:j] += w * norm * np.exp(-0.5 * ((2.0 * sorted_s[i:j] - g) / sigma) ** 2)
    F2 = np.empty_like(flat)
    F2[order] = coherent
    F2 = F2.reshape(s.shape)
    if compton:
        F2 = F2 + incoherent("O", s) + 2.0 * incoherent("H", s)
    return F2 if np.ndim(F2) else float(F2)


# ---------------------------------------------------------------------------------------------------------
# Tables and images
# ---------------------------------------------------------------------------------------------------------

def _stol_grid():
    return np.linspace(0.0, STOL_MAX, int(round(STOL_MAX / STOL_STEP)) + 1)


@functools.lru_cache(maxsize=32)
def _cumulative_table(material, crystallite_nm=None):
    """C(s) = ∫₀ˢ F²(s') ds' on the table grid, electrons²·Å⁻¹ (read-only).

    Images are built from differences of C over each pixel's range of sinθ/λ, so that a ring narrower
    than a pixel still puts its whole weight into the pixels it crosses.
    """
    s = _stol_grid()
    if material == "water":
        C = cumulative_trapezoid(water_F2(s), s, initial=0.0)
    elif material == "air":
        C = cumulative_trapezoid(air_F2(s), s, initial=0.0)
    else:
        C = cumulative_trapezoid(incoherent("O", s) + 2.0 * incoherent("H", s), s, initial=0.0)
        # Bragg rings integrate exactly to error functions; ∫ g(2s − G) ds = ½ Φ((2s − G)/σ).
        G, weight = _ice_ring_weights(STOL_MAX)
        sigma = _ice_ring_sigma(crystallite_nm)
        lo, hi = _ice_window(G, sigma, s)
        steps = np.zeros(len(s) + 1)
        np.add.at(steps, hi, 0.5 * weight)
        C += np.cumsum(steps)[:-1]
        for g, w, i, j in zip(G, weight, lo, hi):
            C[i:j] += 0.5 * w * ndtr((2.0 * s[i:j] - g) / sigma)
    C.setflags(write=False)
    return C


@functools.lru_cache(maxsize=8)  # ~12 MB each for a 512² detector
def _pixel_lookup(detector_key, wavelength_A: float, kahn: float | None):
    """Per-pixel table indices and weights of the pixel's sinθ/λ range, and its P·Ω (read-only arrays).

    A square pixel projected on the radial direction has the variance of a box one pixel wide, so the
    pixel covers s ± ½·px·ds/dR with ds/dR = cos θ · L / (2λ (L² + R²)).
    """
    n_slow, n_fast, pixel_mm, distance_mm, beam_center = detector_key
    detector = Detector(n_slow=n_slow, n_fast=n_fast, pixel_mm=pixel_mm, distance_mm=distance_mm,
                        beam_center_px=beam_center)
    beam = Beam(wavelength_A=wavelength_A, kahn_polarization=kahn)
    s = stol_map(detector, beam)
    if s.max() > STOL_MAX:
        raise ValueError(f"detector reaches sinθ/λ = {s.max():.3f} Å⁻¹: the scattering tables stop at "
                         f"{STOL_MAX} Å⁻¹ (d = {1 / (2 * STOL_MAX):.2f} Å); use a longer wavelength or distance")
    P = pixel_positions_mm(detector)
    L = detector.distance_mm
    R2 = P[..., 1] ** 2 + P[..., 2] ** 2
    cos_theta = np.sqrt(1.0 - (s * wavelength_A) ** 2)
    half = 0.5 * detector.pixel_mm * cos_theta * L / (2.0 * wavelength_A * (L * L + R2))
    s_lo, s_hi = np.maximum(s - half, 0.0), s + half
    n = len(_stol_grid()) - 1

    def locate(x):
        u = x / STOL_STEP
        i = np.minimum(u.astype(np.int64), n - 1)
        return i, u - i

    i_lo, w_lo = locate(s_lo)
    i_hi, w_hi = locate(s_hi)
    inv_width = 1.0 / (s_hi - s_lo)
    factor = pixel_factor(detector, beam)
    arrays = (i_lo, w_lo, i_hi, w_hi, inv_width, factor)
    for a in arrays:
        a.setflags(write=False)
    return arrays


def _image(C, beam: Beam, detector: Detector):
    """Expected photons per pixel for a summed cumulative table C (Σ N_mol·C_material)."""
    kahn = None if beam.kahn_polarization is None else float(beam.kahn_polarization)
    key = (detector.n_slow, detector.n_fast, float(detector.pixel_mm), float(detector.distance_mm),
           detector.beam_center)
    i_lo, w_lo, i_hi, w_hi, inv_width, factor = _pixel_lookup(key, float(beam.wavelength_A), kahn)
    c_hi = C[i_hi] + w_hi * (C[i_hi + 1] - C[i_hi])
    c_lo = C[i_lo] + w_lo * (C[i_lo + 1] - C[i_lo])
    return (R_E_SQ_M2 * beam.fluence) * (c_hi - c_lo) * inv_width * factor


def molecules_in_beam(thickness_mm, density_g_cm3, molecular_weight, beamsize_mm) -> float:
    """Molecules of a sample slab that the square beam illuminates: thickness·(beam size)²·ρ·N_A/MW.

    Parameters
    ----------
    thickness_mm : float, mm
        Path length of the beam through the material.
    density_g_cm3 : float, g/cm³
    molecular_weight : float, g/mol
    beamsize_mm : float, mm
        Edge of the square beam (the sample is clipped to it).

    Returns
    -------
    float, molecules

    Examples
    --------
    >>> f"{molecules_in_beam(0.01, 1.0, 18.0, 0.01):.4e}"  # 10 µm of water in a 10 µm beam
    '3.3456e+13'
    """
    volume_cm3 = (thickness_mm * 0.1) * (beamsize_mm * 0.1) ** 2
    return volume_cm3 * density_g_cm3 * N_AVOGADRO / molecular_weight


_DEFAULTS = {  # density g/cm³, molar mass g/mol
    "water": (WATER_DENSITY_G_CM3, WATER_MW),
    "ice": (ICE_DENSITY_G_CM3, WATER_MW),
}


@dataclass(frozen=True)
class Sample:
    """One amorphous (or powder) material in the beam, given explicitly.

    Attributes
    ----------
    material : {"water", "air", "ice"}
    thickness_mm : float, mm
        Path length of the beam through the material.
    density_g_cm3 : float or None, g/cm³
        ``None``: water 1.0, ice 0.917, air the ideal gas at 293.15 K and 1 atm (1.2e-3).
    molecular_weight : float or None, g/mol
        ``None``: 18.015 for water and ice, 28.96 for air.
    crystallite_nm : float, nm
        Ice only: coherent domain size, which sets the ring width.
    """

    material: str = "water"
    thickness_mm: float = 0.0  # mm
    density_g_cm3: float | None = None  # g/cm³
    molecular_weight: float | None = None  # g/mol
    crystallite_nm: float = 50.0  # nm

    def __post_init__(self):
        v.one_of(self, "material", self.material, MATERIALS)
        v.in_range(self, "thickness_mm", self.thickness_mm, 0, 1e4)
        if self.density_g_cm3 is not None:
            v.in_range(self, "density_g_cm3", self.density_g_cm3, 0, 30, lo_open=True)
        if self.molecular_weight is not None:
            v.in_range(self, "molecular_weight", self.molecular_weight, 0, 1e7, lo_open=True)
        v.in_range(self, "crystallite_nm", self.crystallite_nm, 1, 1e5)

    @property
    def density(self) -> float:
        """Density with the default resolved, g/cm³."""
        if self.density_g_cm3 is not None:
            return float(self.density_g_cm3)
        return air_density_g_cm3() if self.material == "air" else _DEFAULTS[self.material][0]

    @property
    def molar_mass(self) -> float:
        """Molar mass with the default resolved, g/mol."""
        if self.molecular_weight is not None:
            return float(self.molecular_weight)
        return air_molecular_weight() if self.material == "air" else _DEFAULTS[self.material][1]

    def molecules(self, beamsize_mm) -> float:
        """Molecules in the beam of edge ``beamsize_mm`` (mm)."""
        return molecules_in_beam(self.thickness_mm, self.density, self.molar_mass, beamsize_mm)

    def _table(self):
        return _cumulative_table(self.material, float(self.crystallite_nm) if self.material == "ice" else None)


def sample_photons(sample: Sample, beam: Beam, detector: Detector):
    """Expected photons per pixel scattered by one material in the beam, noiseless.

    I = r_e² · Φ · N_mol · F²(sinθ/λ) · P · Ω with N_mol from :func:`molecules_in_beam`; each pixel's F²
    is the mean over the range of sinθ/λ that the pixel spans, P and Ω are taken at its centre, all at the
    central wavelength (divergence and bandpass barely change these smooth curves). With
    ``Sample("water", thickness_mm=0.01, density_g_cm3=1.0, molecular_weight=18.0)`` and the beam of
    nanoBragg's ``v4_water_ring`` case this is ``nonBragg``'s model with our own water curve.

    Parameters
    ----------
    sample : Sample
    beam : Beam
        Wavelength, fluence Φ (photons/m²), beam size (which clips the sample) and polarisation.
    detector : Detector

    Returns
    -------
    (n_slow, n_fast) float64, photons
    """
    return _image(sample.molecules(beam.beamsize_mm) * sample._table(), beam, detector)


@dataclass(frozen=True)
class Background:
    """Amorphous and powder material in the X-ray beam, besides the crystal.

    Attributes
    ----------
    water_thickness_um : float, µm
        Liquid water crossed by the beam (the jet or film carrying the crystals), 1.0 g/cm³, 298 K.
    air_path_mm : float, mm
        Air in the beam path seen by the detector, at 293.15 K and 1 atm.
    ice_thickness_um : float, µm
        Hexagonal ice Ih powder in the beam (frozen solvent), 0.917 g/cm³.
    ice_crystallite_nm : float, nm
        Coherent domain size of the ice, which sets the ring width (Scherrer).
    others : tuple of Sample
        Further materials given explicitly (thickness, density, molar mass), e.g. a nonBragg case.
    """

    water_thickness_um: float = 0.0  # µm
    air_path_mm: float = 0.0  # mm
    ice_thickness_um: float = 0.0  # µm
    ice_crystallite_nm: float = 50.0  # nm
    others: tuple = ()  # Sample s

    def __post_init__(self):
        v.in_range(self, "water_thickness_um", self.water_thickness_um, 0, 1e4)
        v.in_range(self, "air_path_mm", self.air_path_mm, 0, 1e4)
        v.in_range(self, "ice_thickness_um", self.ice_thickness_um, 0, 1e4)
        v.in_range(self, "ice_crystallite_nm", self.ice_crystallite_nm, 1, 1e5)
        if not isinstance(self.others, tuple) or not all(isinstance(x, Sample) for x in self.others):
            v.fail(self, "others", self.others, "a tuple of Sample")

    def samples(self) -> tuple[Sample, ...]:
        """The materials present, as :class:`Sample` s: the named ones with their default densities, then
        ``others``."""
        present = (("water", self.water_thickness_um * 1e-3), ("air", self.air_path_mm),
                   ("ice", self.ice_thickness_um * 1e-3))
        named = tuple(Sample(m, thickness_mm=t, crystallite_nm=self.ice_crystallite_nm) for m, t in present if t > 0)
        return named + tuple(x for x in self.others if x.thickness_mm > 0)


def background_photons(background: Background, beam: Beam, detector: Detector):
    """Expected photons per pixel from all the background materials, noiseless.

    Parameters
    ----------
    background : Background
    beam : Beam
        Wavelength, fluence (photons/m²), beam size (which clips the samples) and polarisation.
    detector : Detector

    Returns
    -------
    (n_slow, n_fast) float64, photons

    Examples
    --------
    >>> img = background_photons(Background(water_thickness_um=10.0), Beam(flux_ph_per_s=1e12, exposure_s=0.1),
    ...                          Detector(n_slow=64, n_fast=64, distance_mm=100.0))
    >>> img.shape, bool(img.min() > 0)
    ((64, 64), True)
    """
    samples = background.samples()
    if not samples:
        return np.zeros(detector.shape)
    # One summed table, one pass over the pixels, however many materials.
    C = sum(s.molecules(beam.beamsize_mm) * s._table() for s in samples)
    return _image(C, beam, detector)
