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
