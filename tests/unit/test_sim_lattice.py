import math

import numpy as np
import pytest
from scipy import integrate

from diffranb.sim.lattice import SHAPE_CODES, lattice_factor, sincg

@pytest.mark.parametrize("n", [2, 7, 10, 25])
@pytest.mark.parametrize("h", [0.0, 1.0, -3.0, 17.0, 101.0])
def test_sincg_peaks_at_n_on_integers(n, h):
    assert abs(sincg(math.pi * h, n)) == pytest.approx(n, rel=1e-12)
    assert abs(sincg(math.pi * (h + 1e-9), n)) == pytest.approx(n, rel=1e-6)


@pytest.mark.parametrize("n", [3, 10])
def test_sincg_squared_integrates_to_n_over_a_period(n):
    val, _ = integrate.quad(lambda h: sincg(math.pi * h, n) ** 2, -0.5, 0.5, limit=200, points=[0.0])
    assert val == pytest.approx(n, rel=1e-6)


def test_sincg_is_zero_at_the_first_fringe_minimum():
    assert abs(sincg(math.pi / 10, 10)) < 1e-12


# Integral of F_latt² over one reciprocal cell, in units of Na·Nb·Nc: exact for the parallelepiped;
# (0.63π/2)^{3/2} for the Gaussian; the sphere of radius 0.63 for the top-hat; for the sphere transform the
# slow 1/r⁴ tails reach past the cell when N is small.
@pytest.mark.parametrize("shape, peak, ratio", [("square", 1.0, 1.0), ("gauss", 1.0, (0.63 * math.pi / 2) ** 1.5),
                                                ("round", 0.723601254558268, 0.89),
                                                ("tophat", 1.0, 4 / 3 * math.pi * 0.63**3)])
def test_lattice_transforms_peak_and_integral(shape, peak, ratio):
    na, nb, nc = 4.0, 5.0, 6.0
    code = SHAPE_CODES[shape]
    assert lattice_factor(0.0, 0.0, 0.0, na, nb, nc, code) == pytest.approx(peak * na * nb * nc)
    assert lattice_factor(2.0, -1.0, 3.0, na, nb, nc, code) == pytest.approx(peak * na * nb * nc, rel=1e-9)
    # Monte Carlo over one reciprocal cell (a fine grid): ∫F_latt² = Na·Nb·Nc for the exact transform.
    g = (np.arange(64) + 0.5) / 64 - 0.5
    h, k, l = np.meshgrid(g, g, g, indexing="ij")
    vals = np.vectorize(lambda a, b, c: lattice_factor(a, b, c, na, nb, nc, code) ** 2)(h, k, l)
    assert vals.mean() / (na * nb * nc) == pytest.approx(ratio, rel=0.01)
