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
    >>> round(float(form_factor("O", 0.0)), 3)
    8.0
    """
    if element not in CROMER_MANN:
        raise ValueError(f"element = {element!r}: must be one of {', '.join(CROMER_MANN)}")
    a, b, c = CROMER_MANN[element]
    s2 = np.square(np.asarray(stol, dtype=float))
    f = c + sum(ai * np.exp(-bi * s2) for ai, bi in zip(a, b))
    return f if np.ndim(f) else float(f)
