"""Atomic X-ray scattering factors.

The elastic form factor uses the Cromer–Mann four-Gaussian fit,
``f(s) = Σᵢ aᵢ exp(−bᵢ s²) + c`` with s = sinθ/λ in Å⁻¹, valid for s ≤ 2 Å⁻¹.

References
----------
International Tables for Crystallography Vol. C (2006), Table 6.1.1.4.
https://doi.org/10.1107/97809553602060000600
"""

from __future__ import annotations

import numpy as np

#: Cromer–Mann coefficients: (a1, a2, a3, a4), (b1, b2, b3, b4) in Å², c. f(0) = Σa + c ≈ Z.
CROMER_MANN = {
    "H": ((0.489918, 0.262003, 0.196767, 0.049879), (20.6593, 7.74039, 49.5519, 2.20159), 0.001305),
    "C": ((2.31, 1.02, 1.5886, 0.865), (20.8439, 10.2075, 0.5687, 51.6512), 0.2156),
    "N": ((12.2126, 3.1322, 2.0125, 1.1663), (0.0057, 9.8933, 28.9975, 0.5826), -11.529),
    "O": ((3.0485, 2.2868, 1.5463, 0.867), (13.2771, 5.7011, 0.3239, 32.9089), 0.2508),
    "S": ((6.9053, 5.2034, 1.4379, 1.5863), (1.4679, 22.2151, 0.2536, 56.172), 0.8669),
    "Ar": ((7.4845, 6.7723, 0.6539, 1.6442), (0.9072, 14.8407, 43.8983, 33.3929), 1.4445),
}

#: Atomic numbers of the elements above.
Z = {"H": 1, "C": 6, "N": 7, "O": 8, "S": 16, "Ar": 18}


def form_factor(element: str, stol):
    """Elastic atomic form factor f(sinθ/λ).

    Parameters
    ----------
    element : str
        One of the keys of :data:`CROMER_MANN`.
    stol : float or array, Å⁻¹
        sinθ/λ.

    Returns
    -------
    f : float or array, electrons

    Examples
    --------
    >>> round(float(form_factor("O", 0.0)), 2)  # f(0) = Z
    8.0
    """
    if element not in CROMER_MANN:
        raise ValueError(f"element = {element!r}: must be one of {', '.join(CROMER_MANN)}")
    a, b, c = CROMER_MANN[element]
    s2 = np.square(np.asarray(stol, dtype=float))
    f = c + sum(ai * np.exp(-bi * s2) for ai, bi in zip(a, b))
    return f if np.ndim(f) else float(f)


#: Bohr radius, Å (CODATA 2018).
BOHR_RADIUS_A = 0.529177210903

#: Incoherent (Compton) scattering functions S(s) = Z·[1 − Σᵢ aᵢ exp(−bᵢ s²)] with Σaᵢ = 1, so that
#: S(0) = 0 and S → Z. Our own four-term least-squares fits to the Hartree–Fock values tabulated by
#: Hubbell et al. (1975) for 0 ≤ s ≤ 2 Å⁻¹ (largest deviation 0.009 C, 0.010 N, 0.011 O, 0.031 S,
#: 0.018 Ar), in the same Gaussian-sum form as the Cromer–Mann form factors. Entries: (a1..a4), (b1..b4) Å².
#: Hydrogen needs no fit: see :func:`incoherent`.
INCOHERENT = {
    "C": ((0.15172, 0.19569, 0.50975, 0.14284), (0.66113, 1.885, 19.917, 75.727)),
    "N": ((0.19884, 0.13578, 0.20341, 0.46197), (0.59045, 2.1658, 52.272, 15.619)),
    "O": ((0.21001, 0.11779, 0.50098, 0.17122), (0.50316, 2.5123, 12.3, 42.773)),
    "S": ((0.19744, 0.13342, 0.26304, 0.4061), (0.21719, 84.889, 20.997, 1.9056)),
    "Ar": ((0.19289, 0.35237, 0.12196, 0.33278), (0.1877, 1.4505, 65.229, 14.376)),
}


def incoherent(element: str, stol):
    """Incoherent (Compton) scattering function S(sinθ/λ) of a free atom, electrons² (per atom).

    The Compton intensity scattered by one atom, in units of the Thomson scattering of one free electron
    (the Breit–Dirac recoil factor, < 0.3 % below 20 keV at the angles of a flat detector, is left out).
    It rises from 0 in the forward direction to Z at high angle, where every electron scatters
    independently. For hydrogen it is exact: S = 1 − f₁ₛ² with the 1s form factor
    f₁ₛ = [1 + (2π a₀ s)²]⁻² (Waller–Hartree for one electron); other elements use the fits in
    :data:`INCOHERENT`.

    Parameters
    ----------
    element : str
        "H" or one of the keys of :data:`INCOHERENT`.
    stol : float or array, Å⁻¹
        sinθ/λ, valid for 0 ≤ s ≤ 2 Å⁻¹.

    Returns
    -------
    S : float or array, electrons² (dimensionless intensity per atom)

    References
    ----------
    J. H. Hubbell et al., "Atomic form factors, incoherent scattering functions, and photon scattering
    cross sections", J. Phys. Chem. Ref. Data 4, 471–538 (1975). https://doi.org/10.1063/1.555523
    International Tables for Crystallography Vol. C (2006), §6.1.1 (incoherent scattering; hydrogen).
    https://doi.org/10.1107/97809553602060000600

    Examples
    --------
    >>> round(float(incoherent("O", 0.0)), 6), round(float(incoherent("O", 2.0)), 1)
    (0.0, 7.8)
    >>> round(float(incoherent("H", 0.1)), 4)
    0.3426
    """
    s = np.asarray(stol, dtype=float)
    if element == "H":
        f1s = 1.0 / (1.0 + (2.0 * np.pi * BOHR_RADIUS_A * s) ** 2) ** 2
        S = 1.0 - f1s**2
    elif element in INCOHERENT:
        a, b = INCOHERENT[element]
        S = Z[element] * (1.0 - sum(ai * np.exp(-bi * s * s) for ai, bi in zip(a, b)))
    else:
        raise ValueError(f"element = {element!r}: must be one of H, {', '.join(INCOHERENT)}")
    return S if np.ndim(S) else float(S)
