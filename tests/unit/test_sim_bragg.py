import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from diffranb.sim import reference
from diffranb.sim.bragg import bragg_exact, bragg_fast
from diffranb.sim.crystal import Crystal, StructureFactors, reciprocal_basis
from diffranb.sim.geometry import Beam, Detector

DET = Detector(n_slow=256, n_fast=256, pixel_mm=0.172, distance_mm=100.0, beam_center_px=(128.0, 128.0))
BEAM = Beam(wavelength_A=1.0)


def crystal_with_reflection_at(hkl, phi_deg, cell=(25.0, 25.0, 25.0, 90, 90, 90), **kw):
    """A crystal oriented so that reflection hkl is exactly in diffraction, at azimuth phi on the detector.

    Returns the crystal and the (slow, fast) pixel coordinates where Bragg's law puts the spot.
    """
    g = np.asarray(hkl, float) @ reciprocal_basis(cell)
    two_theta = 2 * math.asin(BEAM.wavelength_A * np.linalg.norm(g) / 2)  # Bragg's law
    r_px = DET.distance_mm * math.tan(two_theta) / DET.pixel_mm
    ds, df = r_px * math.sin(math.radians(phi_deg)), r_px * math.cos(math.radians(phi_deg))
    p = np.array([DET.distance_mm, -ds * DET.pixel_mm, df * DET.pixel_mm])
    q = (p / np.linalg.norm(p) - [1, 0, 0]) / BEAM.wavelength_A
    rot, _ = Rotation.align_vectors([q], [g])
    u = tuple(map(tuple, rot.as_matrix()))
    crystal = Crystal(cell=cell, rotation=u, **kw)
    assert np.allclose(np.asarray(hkl) @ crystal.reciprocal_vectors(), q, atol=1e-12)
    s0, f0 = DET.beam_center
    return crystal, (s0 + ds, f0 + df)


def centroid(image, centre, half=8):
    i0, j0 = int(round(centre[0])), int(round(centre[1]))
    win = image[i0 - half:i0 + half + 1, j0 - half:j0 + half + 1].astype(float)
    ii, jj = np.mgrid[i0 - half:i0 + half + 1, j0 - half:j0 + half + 1]
    return (win * ii).sum() / win.sum(), (win * jj).sum() / win.sum(), win.sum()


@pytest.mark.parametrize("hkl, phi", [((2, 0, 0), 30.0), ((2, 1, 1), 200.0), ((0, 3, -2), 300.0), ((4, 2, 1), 95.0)])
@pytest.mark.parametrize("model", ["exact", "fast"])
def test_spot_centroid_is_where_braggs_law_puts_it(hkl, phi, model):
    # Small cell, so that neighbouring reflections stay out of the centroid window; 16 cells, so that the
    # spot spans a few pixels and its centroid is not pulled to the pixel grid.
    crystal, (s, f) = crystal_with_reflection_at(hkl, phi, cells_abc=(16, 16, 16), shape="gauss")
    image = (bragg_exact if model == "exact" else bragg_fast)(crystal, BEAM, DET)
    cs, cf, total = centroid(image, (s, f))
    assert total > 0
    assert math.hypot(cs - s, cf - f) < 0.1


def integrated_spot(crystal, centre):
    return centroid(bragg_fast(crystal, BEAM, DET), centre, half=20)[2]


def test_integrated_intensity_scales_with_crystal_volume_and_f_squared():
    # A mosaic spread much wider than the lattice transform: the Ewald sphere cuts the whole reflection,
    # so what reaches the detector is the integrated intensity, ∝ number of cells × F².
    base, centre = crystal_with_reflection_at((4, 1, 0), 45.0, cells_abc=(80, 80, 80), shape="gauss",
                                              mosaic_spread_deg=1.0)
    i0 = integrated_spot(base, centre)
    assert integrated_spot(replace(base, cells_abc=(160, 80, 80)), centre) / i0 == pytest.approx(2.0, rel=0.02)
    assert integrated_spot(replace(base, n_blocks=3.0), centre) / i0 == pytest.approx(3.0, rel=1e-6)
    f200 = replace(base, structure=StructureFactors(default_F=200.0))
    assert integrated_spot(f200, centre) / i0 == pytest.approx(4.0, rel=1e-6)


def test_fluence_scales_the_image():
    crystal, centre = crystal_with_reflection_at((4, 0, 0), 30.0, cells_abc=(8, 8, 8))
    a = bragg_exact(crystal, BEAM, DET)
    b = bragg_exact(crystal, replace(BEAM, fluence_ph_per_m2=2 * BEAM.fluence), DET)
    assert np.allclose(b, 2 * a, rtol=1e-6)


def test_fast_model_agrees_with_the_monte_carlo_model():
    det = replace(DET, distance_mm=150.0)
    crystal = Crystal(cell=(79.1, 79.1, 37.9, 90, 90, 90), cells_abc=(12, 12, 12), misset_deg=(10, 20, 30),
                      shape="gauss", mosaic_spread_deg=0.5, mosaic_domains=1000)
    exact = bragg_exact(crystal, BEAM, det, mosaic_seed=3)
    fast = bragg_fast(crystal, BEAM, det)
    stats = reference.compare_spots(fast, exact, reference.reflection_labels(crystal, BEAM, det))
    assert stats["n_compared"] >= 30
    assert stats["total_ratio"] == pytest.approx(1.0, abs=0.05)
    assert stats["median_rel_diff"] <= 0.08
    assert stats["frac_within_15pct"] >= 0.9
    assert stats["median_centroid_shift_px"] <= 0.1


def test_oversampled_pixel_is_the_mean_of_its_sub_pixels():
    # nanoBragg's definition: F²·F_latt² averaged over n×n sub-pixels, times P·Ω of the first sub-pixel.
    from diffranb.sim.geometry import pixel_factor

    crystal, _ = crystal_with_reflection_at((2, 1, 1), 200.0, cells_abc=(16, 16, 16))
    det = replace(DET, n_slow=64, n_fast=64, beam_center_px=(32.0, 32.0), distance_mm=40.0)
    beam = replace(BEAM, kahn_polarization=0.9)
    over = bragg_exact(crystal, beam, replace(det, oversample=2)).astype(float)
    subs = []
    for ds in (-0.25, 0.25):
        for df in (-0.25, 0.25):
            shifted = replace(det, beam_center_px=(32.0 - ds, 32.0 - df))
            subs.append(bragg_exact(crystal, beam, shifted).astype(float) / pixel_factor(shifted, beam))
    expected = np.mean(subs, axis=0) * pixel_factor(det, beam, subpixel_offset=(-0.25, -0.25))
    assert np.allclose(over, expected, rtol=1e-5, atol=1e-6 * over.max())


def test_wilson_crystal_spots_fade_with_resolution():
    crystal = Crystal(cells_abc=(20, 20, 20), shape="gauss", misset_deg=(10, 20, 30), mosaic_spread_deg=0.3,
                      structure=StructureFactors(kind="wilson", b_factor_A2=40.0, seed=1))
    det = replace(DET, n_slow=512, n_fast=512, beam_center_px=(256.0, 256.0))
    image = bragg_fast(crystal, BEAM, det).astype(float)
    s, f = np.mgrid[0:512, 0:512]
    r = np.hypot(s - 256, f - 256)
    inner, outer = image[(r > 20) & (r < 120)].mean(), image[(r > 200) & (r < 250)].mean()
    assert inner > 5 * outer


@pytest.mark.parametrize("hkl, phi", [((2, 0, 0), 30.0), ((2, 1, 1), 200.0), ((0, 3, -2), 300.0), ((4, 2, 1), 95.0)])
def test_predict_spots_puts_a_reflection_in_diffraction_where_braggs_law_does(hkl, phi):
    from diffranb.sim.bragg import predict_spots

    crystal, (s, f) = crystal_with_reflection_at(hkl, phi, cells_abc=(16, 16, 16), shape="gauss")
    spots = predict_spots(crystal, BEAM, DET)
    (i,) = np.flatnonzero((spots["h"] == hkl[0]) & (spots["k"] == hkl[1]) & (spots["l"] == hkl[2]))
    assert spots["slow"][i] == pytest.approx(s, abs=1e-6)
    assert spots["fast"][i] == pytest.approx(f, abs=1e-6)
    assert abs(spots["excitation_error"][i]) < 1e-12
    g = np.asarray(hkl, float) @ crystal.reciprocal_vectors()
    assert spots["d_spacing"][i] == pytest.approx(1 / np.linalg.norm(g), rel=1e-12)
    assert abs(spots["excitation_error"][i]) <= spots["radial_sigma"][i]


def test_predict_spots_excitation_error_is_the_distance_to_the_ewald_sphere():
    from diffranb.sim.bragg import predict_spots

    crystal = Crystal(cells_abc=(8, 8, 8), misset_deg=(10, 20, 30), shape="gauss")
    spots = predict_spots(crystal, BEAM, DET, max_excitation=0.01)
    assert len(spots["h"]) > 10 and np.all(np.abs(spots["excitation_error"]) <= 0.01)
    g = np.column_stack([spots["h"], spots["k"], spots["l"]]) @ crystal.reciprocal_vectors()
    centre = np.array([-1.0 / BEAM.wavelength_A, 0.0, 0.0])
    assert np.allclose(np.linalg.norm(g - centre, axis=1) - 1.0 / BEAM.wavelength_A, spots["excitation_error"])
    # Moving a reflection onto the sphere along the radius must land it on the predicted pixel.
    d = (g - centre) / np.linalg.norm(g - centre, axis=1, keepdims=True)
    s0, f0 = DET.beam_center
    t = DET.distance_mm / d[:, 0]
    assert np.allclose(spots["slow"], s0 - t * d[:, 1] / DET.pixel_mm)  # slow runs along −y
    assert np.allclose(spots["fast"], f0 + t * d[:, 2] / DET.pixel_mm)
    assert np.all(np.diff(spots["d_spacing"]) <= 0)


def test_predict_spots_by_default_finds_every_spot_the_fast_model_draws():
    from diffranb.sim.bragg import predict_spots

    crystal = Crystal(cells_abc=(12, 12, 12), misset_deg=(10, 20, 30), shape="gauss", mosaic_spread_deg=0.3)
    image = bragg_fast(crystal, BEAM, DET)
    spots = predict_spots(crystal, BEAM, DET)
    bright = np.argwhere(image > 1e-3 * image.max())
    # Left out: the direct beam (000, not a spot) and tails of spots centred just off the detector.
    s0, f0 = DET.beam_center
    inner = (np.hypot(bright[:, 0] - s0, bright[:, 1] - f0) > 5) & np.all((bright >= 5) & (bright < 256 - 5), axis=1)
    bright = bright[inner]
    dist = np.hypot(bright[:, None, 0] - spots["slow"], bright[:, None, 1] - spots["fast"]).min(axis=1)
    assert len(bright) > 100
    assert dist.max() < 5.0
    assert not np.any((spots["h"] == 0) & (spots["k"] == 0) & (spots["l"] == 0))
