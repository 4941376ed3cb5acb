import math

import numpy as np
import pytest

from diffranb.sim import geometry as g


def test_detector_rejects_beam_centre_off_the_detector():
    with pytest.raises(ValueError, match=r"beam_center_px = \(600"):
        g.Detector(beam_center_px=(600.0, 10.0))


@pytest.mark.parametrize("field, value", [("pixel_mm", 0.0), ("distance_mm", -5.0), ("distance_mm", math.nan),
                                          ("n_slow", 0), ("oversample", 2.5)])
def test_detector_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"Detector.{field}"):
        g.Detector(**{field: value})


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, "one"])
def test_beam_rejects_bad_wavelength(value):
    with pytest.raises(ValueError, match="Beam.wavelength_A"):
        g.Beam(wavelength_A=value)


def test_fluence_from_flux_exposure_and_beam_size():
    beam = g.Beam(flux_ph_per_s=1e12, exposure_s=0.1, beamsize_mm=0.01)
    assert beam.fluence == pytest.approx(1e11 / 1e-10)
    assert beam.photons == pytest.approx(1e11)
    assert g.Beam().fluence * 7.94079248018965e-30 == pytest.approx(1.0)


def test_solid_angles_add_up_to_the_detector_solid_angle():
    det = g.Detector(n_slow=200, n_fast=200, pixel_mm=0.5, distance_mm=80.0, beam_center_px=(99.5, 99.5))
    omega = g.pixel_factor(det, g.Beam()).sum()
    half = 50.0  # mm, half of the detector edge, centred on the beam
    exact = 4 * math.asin(half**2 / (half**2 + det.distance_mm**2))
    assert omega == pytest.approx(exact, rel=2e-5)


def test_polarization_limits():
    pol = g.polarization.py_func
    assert pol(1.0, 0.0, 0.0, 0.9) == pytest.approx(1.0)  # forward scattering
    assert pol(0.0, 0.0, 1.0, 1.0) == pytest.approx(0.0)  # 2θ = 90° along E, fully polarised
    assert pol(0.0, 1.0, 0.0, 1.0) == pytest.approx(1.0)  # 2θ = 90° perpendicular to E
    assert pol(0.0, 0.6, 0.8, 0.0) == pytest.approx(0.5)  # unpolarised: ½(1 + cos² 90°)
    assert pol(0.0, 0.0, 1.0, math.nan) == 1.0  # switched off


def test_beam_centre_pixel_sees_zero_scattering_vector():
    det = g.Detector(n_slow=9, n_fast=9, beam_center_px=(4.0, 4.0))
    stol = g.stol_map(det, g.Beam())
    assert stol[4, 4] == 0.0
    assert np.all(stol[np.arange(9) != 4] > 0)


def test_two_theta_on_the_fast_axis_follows_the_geometry():
    det = g.Detector(n_slow=1, n_fast=101, pixel_mm=1.0, distance_mm=100.0, beam_center_px=(0.0, 0.0))
    assert g.two_theta_deg(det)[0, 100] == pytest.approx(45.0)


def test_beam_sources_span_divergence_and_bandpass():
    beam = g.Beam(wavelength_A=1.0, divergence_mrad=2.0, divergence_steps=5, bandpass=0.01, bandpass_steps=3)
    dirs, lam, w = g.beam_sources(beam)
    assert w.sum() == pytest.approx(1.0)
    assert np.allclose(np.linalg.norm(dirs, axis=1), 1.0)
    assert lam.min() == pytest.approx(0.995) and lam.max() == pytest.approx(1.005)
    tilt = np.degrees(np.arccos(dirs[:, 0])) * math.pi / 180 * 1e3  # mrad
    assert tilt.max() <= 1.0 + 1e-9  # inside the circle of the full range
    assert len(dirs) == 3 * 13  # the 13 points of the 5×5 grid inside the circle, times 3 wavelengths
