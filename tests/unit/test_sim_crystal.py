import math

import numpy as np
import pytest
from scipy import stats

from diffranb.sim import crystal as cr

TRICLINIC = (40.0, 52.0, 68.0, 82.0, 97.0, 104.0)


@pytest.mark.parametrize("cell", [(50.0, 50.0, 50.0, 90, 90, 90), (79.1, 79.1, 37.9, 90, 90, 90), TRICLINIC])
def test_real_and_reciprocal_bases_are_dual(cell):
    recip = cr.reciprocal_basis(cell)
    real = cr.real_from_reciprocal(recip)
    assert np.allclose(real @ recip.T, np.eye(3), atol=1e-12)
    assert np.linalg.norm(real, axis=1) == pytest.approx(cell[:3])
    cosines = [real[1] @ real[2], real[0] @ real[2], real[0] @ real[1]]
    lengths = [cell[1] * cell[2], cell[0] * cell[2], cell[0] * cell[1]]
    assert np.degrees(np.arccos(np.divide(cosines, lengths))) == pytest.approx(cell[3:])
    assert abs(np.linalg.det(real)) == pytest.approx(cr.cell_volume(cell))


def test_cubic_reciprocal_basis_is_one_over_a():
    assert np.allclose(cr.reciprocal_basis((25.0, 25.0, 25.0, 90, 90, 90)), np.eye(3) / 25.0)


def test_misset_rotates_about_x_then_y_then_z():
    m = cr.misset_matrix((90, 0, 0))
    assert np.allclose(m @ [0, 1, 0], [0, 0, 1])
    both = cr.misset_matrix((90, 90, 0))
    assert np.allclose(both, cr.misset_matrix((0, 90, 0)) @ m)


def test_random_orientations_are_uniform():
    rng = np.random.default_rng(7)
    mats = np.array([cr.random_rotation(rng) for _ in range(3000)])
    # A uniformly rotated unit vector has a uniform z component on [-1, 1] (Archimedes) ...
    z = mats[:, 2, 0]
    assert stats.kstest(z, stats.uniform(-1, 2).cdf).pvalue > 1e-3
    # ... and the rotation angle ω has density (1 − cos ω)/π on [0, π].
    omega = np.arccos(np.clip((np.trace(mats, axis1=1, axis2=2) - 1) / 2, -1, 1))
    cdf = lambda w: (w - np.sin(w)) / np.pi  # noqa: E731
    assert stats.kstest(omega, cdf).pvalue > 1e-3


def test_random_misset_angles_would_fail_the_uniformity_test():
    # The test above can fail: uniform Euler angles (nanoBragg's "-misset random") crowd the poles.
    rng = np.random.default_rng(7)
    mats = np.array([cr.misset_matrix(rng.uniform(-180, 180, 3)) for _ in range(3000)])
    omega = np.arccos(np.clip((np.trace(mats, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert stats.kstest(omega, lambda w: (w - np.sin(w)) / np.pi).pvalue < 1e-3


def test_mosaic_domains_stay_within_the_spread():
    rots = cr.mosaic_rotations(0.5, 4000, np.random.default_rng(1))
    angles = np.degrees(np.arccos(np.clip((np.trace(rots, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert np.allclose(rots[0], np.eye(3))
    assert angles.max() <= 0.5 + 1e-9
    from scipy.spatial.transform import Rotation

    rotvec = Rotation.from_matrix(rots).as_rotvec()
    assert rotvec.std(axis=0) == pytest.approx([cr.mosaic_angle_rms_rad(0.5)] * 3, rel=0.05)


def test_wilson_amplitudes_have_wilson_statistics():
    crystal = cr.Crystal(structure=cr.StructureFactors(kind="wilson", b_factor_A2=20.0, seed=3))
    src = cr.amplitude_source(crystal)
    recip = cr.reciprocal_basis(crystal.cell)
    hkl = np.array([(h, k, l) for h in range(-30, 31) for k in range(-30, 31) for l in range(-15, 16)])
    stol = 0.5 * np.linalg.norm(hkl @ recip, axis=1)
    shell = (stol > 0.15) & (stol < 0.16)
    f = np.array([cr.structure_amplitude(h, k, l, s, *src) for (h, k, l), s in zip(hkl[shell], stol[shell])])
    i = f**2
    expected = cr.wilson_mean_intensity(stol[shell], crystal.cell, 20.0)
    assert np.mean(i / expected) == pytest.approx(1.0, abs=4 / math.sqrt(len(i)))
    assert np.mean(i**2) / np.mean(i) ** 2 == pytest.approx(2.0, rel=0.15)  # acentric: exponential intensities
    again = [cr.structure_amplitude(h, k, l, s, *src) for (h, k, l), s in zip(hkl[shell][:50], stol[shell][:50])]
    assert np.array_equal(again, f[:50])
    other = cr.amplitude_source(cr.Crystal(structure=cr.StructureFactors(kind="wilson", seed=4)))
    assert cr.structure_amplitude(1, 2, 3, 0.1, *other) != cr.structure_amplitude(1, 2, 3, 0.1, *src)


def test_wilson_mean_falls_with_b_factor():
    cell = (79.1, 79.1, 37.9, 90, 90, 90)
    s = np.array([0.05, 0.25])
    soft, stiff = cr.wilson_mean_intensity(s, cell, 40.0), cr.wilson_mean_intensity(s, cell, 10.0)
    assert soft[1] / stiff[1] == pytest.approx(math.exp(-2 * 30 * 0.25**2) * soft[0] / stiff[0] / math.exp(-2 * 30 * 0.05**2))
    assert soft[0] < stiff[0]


def test_table_amplitudes():
    crystal = cr.Crystal(structure=cr.StructureFactors(kind="table", default_F=7.0, table=((1, 2, 3, 50.0), (-1, 0, 0, 9.0))))
    src = cr.amplitude_source(crystal)
    assert cr.structure_amplitude(1, 2, 3, 0.1, *src) == 50.0
    assert cr.structure_amplitude(-1, 0, 0, 0.1, *src) == 9.0
    assert cr.structure_amplitude(5, 5, 5, 0.1, *src) == 7.0


@pytest.mark.parametrize("kwargs, field", [
    (dict(cells_abc=(0, 10, 10)), "cells_abc"),
    (dict(shape="cube"), "shape"),
    (dict(cell=(10, 10, 10, 90, 90, 190)), "cell"),
    (dict(cell=(10, 10, 10, 120, 120, 120)), "cell"),
    (dict(mosaic_spread_deg=-0.1), "mosaic_spread_deg"),
    (dict(rotation=((1, 0, 0), (0, 1, 0), (0, 0, -1))), "rotation"),
])
def test_crystal_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=f"Crystal.{field}"):
        cr.Crystal(**kwargs)


def test_structure_factor_table_must_have_rows():
    with pytest.raises(ValueError, match="StructureFactors.table"):
        cr.StructureFactors(kind="table", table=())
