"""The simulator against nanoBragg's own images (shared/reference/nanobragg beside the checkout)."""

import numpy as np
import pytest

from diffranb import cli, io
from diffranb.sim import reference
from diffranb.sim.scene import expected_photons

REF = reference.reference_dir()
needs_reference = pytest.mark.skipif(REF is None, reason="nanoBragg reference images (../shared/reference) not present")


@needs_reference
@pytest.mark.parametrize("case", ["v1_square_tetragonal", "v2_triclinic_polarized"])
def test_exact_cases_match_to_1e4_through_the_cli(case, tmp_path):
    out = tmp_path / f"{case}.npy"
    assert cli.main(["simulate", "--params", str(REF / f"{case}.json"), "--out", str(out), "--noiseless"]) == 0
    ours = np.load(out)
    _, ref = reference.load_reference(case)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert reference.max_relative_error(ours, ref, above=1.0) <= 1e-4


@needs_reference
@pytest.mark.slow
def test_mosaic_case_matches_statistically():
    params, ref = reference.load_reference("v3_mosaic")
    scene, seed = io.load_case(REF / "v3_mosaic.json")
    # Our own domain draws (nanoBragg's are not reproducible): compare spot by spot.
    ours = expected_photons(scene, mosaic_seed=seed + 1)
    labels = reference.reflection_labels(scene.crystal, scene.beam, scene.detector)
    stats = reference.compare_spots(ours, ref, labels)
    assert stats["n_compared"] > 100
    assert stats["median_rel_diff"] <= 0.05
    assert stats["frac_within_15pct"] >= 0.90
    assert stats["total_ratio"] == pytest.approx(1.0, abs=0.02)
    assert stats["median_centroid_shift_px"] <= 0.1


def test_load_case_rejects_unknown_programs():
    with pytest.raises(ValueError, match="program = 'MOSFLM'"):
        io.load_case({"program": "MOSFLM", "pixel_mm": 0.1, "distance_mm": 100, "beam_center_px_slow_fast": [1, 1]})


def test_cli_reports_bad_input_without_writing(tmp_path, capsys):
    case = tmp_path / "bad.json"
    case.write_text('{"program": "nanoBragg", "unit_cell_A_deg": [79, 79, 38, 90, 90, 90], "cells_abc": [10, 10, 10],'
                    ' "wavelength_A": -1.0, "distance_mm": 100, "pixel_mm": 0.172, "detector_pixels": 64,'
                    ' "beam_center_px_slow_fast": [32, 32]}')
    out = tmp_path / "out.npy"
    assert cli.main(["simulate", "--params", str(case), "--out", str(out), "--noiseless"]) == 2
    assert "wavelength_A = -1.0" in capsys.readouterr().err
    assert not out.exists()


def test_spot_centroids_find_the_centre_of_a_sampled_gaussian_and_refuse_clipped_windows():
    s, f = np.mgrid[0:64, 0:64]
    centres = np.array([[20.3, 31.7], [40.0, 12.45], [1.0, 30.0], [50.0, 62.6]])
    image = sum(np.exp(-((s - cs) ** 2 + (f - cf) ** 2) / (2 * 1.5**2)) for cs, cf in centres)
    found = reference.spot_centroids(image, centres + 0.3, half_window=6)
    assert np.allclose(found[:2], centres[:2], atol=1e-4)
    assert np.all(np.isnan(found[2:]))  # windows crossing the top and right edges
    assert np.all(np.isnan(reference.spot_centroids(np.zeros((64, 64)), centres[:2], half_window=3)))
    with pytest.raises(ValueError, match="half_window"):
        reference.spot_centroids(image, centres, half_window=-1)


def test_radial_profile_of_a_function_of_resolution_returns_that_function():
    from diffranb.sim.geometry import Beam, Detector, stol_map

    det, beam = Detector(n_slow=80, n_fast=64, distance_mm=50.0, beam_center_px=(20.0, 30.0)), Beam()
    stol = stol_map(det, beam)
    centres, mean = reference.radial_profile(3.0 + stol**2, det, beam, n_bins=40)
    assert np.all(np.diff(centres) > 0) and centres.max() <= stol.max()
    width = stol.max() / 40
    assert np.allclose(mean, 3.0 + centres**2, atol=2 * centres.max() * width)
    # Masked pixels are ignored: a hot masked region leaves the profile alone.
    hot = np.zeros(det.shape, bool)
    hot[:10] = True
    _, masked = reference.radial_profile(np.where(hot, 1e6, 3.0), det, beam, n_bins=40, mask=~hot)
    assert np.allclose(masked, 3.0)
    with pytest.raises(ValueError, match="shape"):
        reference.radial_profile(np.zeros((3, 3)), det, beam)


@needs_reference
def test_water_case_runs_through_the_cli_with_our_water_model(tmp_path):
    out = tmp_path / "v4.npy"
    assert cli.main(["simulate", "--params", str(REF / "v4_water_ring.json"), "--out", str(out), "--noiseless"]) == 0
    ours = np.load(out)
    _, ref = reference.load_reference("v4_water_ring")
    s, f = np.indices(ref.shape)
    r = np.hypot(s - 256, f - 256).astype(int)
    prof_ours = np.bincount(r.ravel(), ours.ravel()) / np.bincount(r.ravel())
    prof_ref = np.bincount(r.ravel(), ref.ravel()) / np.bincount(r.ravel())
    assert abs(np.argmax(prof_ours[:256]) - np.argmax(prof_ref[:256])) <= 0.02 * np.argmax(prof_ref[:256])
