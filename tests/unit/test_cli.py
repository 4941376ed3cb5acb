import subprocess
import sys

import numpy as np
import pytest

from diffranb import cli


def test_help_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "diffranb.cli", "--help"], capture_output=True, text=True, check=True)
    assert "simulate" in done.stdout and "bench" in done.stdout


def test_simulate_with_noise_writes_adu(tmp_path):
    case = tmp_path / "case.json"
    case.write_text('{"program": "nanoBragg", "unit_cell_A_deg": [79.1, 79.1, 37.9, 90, 90, 90], "cells_abc": [10, 10, 10],'
                    ' "misset_deg_xyz": [10, 20, 30], "default_F": 100, "wavelength_A": 1.0, "distance_mm": 150,'
                    ' "pixel_mm": 0.172, "detector_pixels": 64, "beam_center_px_slow_fast": [32, 32]}')
    out = tmp_path / "frame.npy"
    assert cli.main(["simulate", "--params", str(case), "--out", str(out), "--seed", "4"]) == 0
    frame = np.load(out)
    assert frame.dtype == np.uint16 and frame.shape == (64, 64)
    again = tmp_path / "again.npy"
    cli.main(["simulate", "--params", str(case), "--out", str(again), "--seed", "4"])
    assert np.array_equal(frame, np.load(again))


def test_simulate_refuses_a_missing_directory(tmp_path):
    case = tmp_path / "case.json"
    case.write_text("{}")
    try:
        cli.main(["simulate", "--params", str(case), "--out", str(tmp_path / "no" / "such" / "x.npy")])
    except SystemExit as exc:
        assert "does not exist" in str(exc)
    else:
        raise AssertionError("expected SystemExit")


def test_spot_backgrounds_parse_from_the_command_line():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "classic", "--data", "x.h5", "--out", "m", "--extractor", "spots",
                              "--window", "5, 5x2"])
    assert args.window == (5, "5x2")
    args = parser.parse_args(["tune", "hyperopt", "--data", "x.h5", "--out", "t.json", "--extractors", "spots",
                              "--windows", "5,5x2,5x3"])
    assert args.windows == (5, "5x2", "5x3")
    assert parser.parse_args(["tune", "hyperopt", "--data", "x.h5", "--out", "t.json", "--windows", "5X2"]).windows \
        == ("5x2",)
    assert parser.parse_args(["tune", "hyperopt", "--data", "x.h5", "--out", "t.json"]).windows is None
    for bad in ("abc", "5,4", "5x4", "5,5", ""):
        with pytest.raises(SystemExit):  # argparse's own error message, before anything is opened
            parser.parse_args(["tune", "hyperopt", "--data", "x.h5", "--out", "t.json", "--windows", bad])
