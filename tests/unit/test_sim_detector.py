"""Tests of diffranb.sim.detector: each checks a number that the physics or simple counting fixes."""

import math

import numpy as np
import pytest
from scipy import integrate

from diffranb.sim.detector import (DetectorResponse, apply_psf, beamstop_transmission, ccd_response, detect,
                                   fixed_pattern, pixel_array_response, psf_kernel, psf_pixel_integral)
from diffranb.sim.geometry import Detector

#: A response that records photons as they are: counting statistics only.
IDEAL = dict(psf="none", psf_g_um=0.0, readout_noise_adu=0.0, gain_rms=0.0, adu_per_photon=1.0,
             adc_offset_adu=0.0, beamstop_radius_mm=0.0, beamstop_holder_width_mm=0.0,
             hot_pixel_fraction=0.0, dead_pixel_fraction=0.0)


def test_counts_are_poisson():
    det = Detector(n_slow=128, n_fast=256)
    lam = np.where(np.arange(256) < 128, 0.3, 25.0)[None, :] * np.ones((128, 1))
    frame = detect(lam, DetectorResponse(**IDEAL), det, np.random.default_rng(1)).astype(float)
    for half, mu in ((frame[:, :128], 0.3), (frame[:, 128:], 25.0)):
        n = half.size
        assert abs(half.mean() - mu) < 5 * math.sqrt(mu / n)
        # Var of the sample variance of a Poisson variable ≈ (μ + 2μ²)/n.
        assert abs(half.var() - mu) < 5 * math.sqrt((mu + 2 * mu * mu) / n)


def test_dark_frame_is_offset_plus_read_noise():
    det = Detector(n_slow=128, n_fast=128)
    resp = ccd_response(beamstop_radius_mm=0.0, beamstop_holder_width_mm=0.0, hot_pixel_fraction=0.0,
                        dead_pixel_fraction=0.0)
    frame = detect(np.zeros(det.shape), resp, det, np.random.default_rng(2)).astype(float)
    assert abs(frame.mean() - 40.0) < 0.05
    # Rounding to whole ADU adds a uniform error of variance 1/12.
    assert abs(frame.std() - math.sqrt(3.0**2 + 1 / 12)) < 0.05


def test_mean_signal_scales_with_gain_and_offset():
    det = Detector(n_slow=96, n_fast=96)
    resp = DetectorResponse(**{**IDEAL, "psf": "fiber", "psf_g_um": 40.0, "adu_per_photon": 2.5,
                               "adc_offset_adu": 40.0})
    frame = detect(np.full(det.shape, 100.0), resp, det, np.random.default_rng(3)).astype(float)
    inner = frame[20:-20, 20:-20]  # the PSF conserves counts more than its radius from the edges
    assert abs(inner.mean() - (40.0 + 250.0)) < 0.5


def test_gain_pattern_is_fixed_and_seeded():
    resp = DetectorResponse(gain_rms=0.05, pattern_seed=7)
    gain, _, _ = fixed_pattern(resp, (64, 80))
    assert gain.dtype == np.float32 and gain.shape == (64, 80)
    assert abs(gain.mean() - 1.0) < 1e-5 and abs(gain.std() - 0.05) < 1e-5
    # Recomputed from the seed (a different defect fraction misses the cache), not remembered.
    other_defects = DetectorResponse(gain_rms=0.05, pattern_seed=7, dead_pixel_fraction=0.01)
    np.testing.assert_array_equal(fixed_pattern(other_defects, (64, 80))[0], gain)
    assert not np.allclose(fixed_pattern(DetectorResponse(gain_rms=0.05, pattern_seed=8), (64, 80))[0], gain)


def test_gain_pattern_is_the_same_on_every_image():
    det = Detector(n_slow=64, n_fast=64)
    resp = DetectorResponse(**{**IDEAL, "gain_rms": 0.1, "pattern_seed": 11})
    gain = fixed_pattern(resp, det.shape)[0]
    photons = np.full(det.shape, 1e4)  # 1 % counting noise against a 10 % gain pattern
    for seed in (1, 2):
        ratio = detect(photons, resp, det, np.random.default_rng(seed)) / 1e4
        assert np.corrcoef(ratio.ravel(), gain.ravel())[0, 1] > 0.98


def test_psf_pixel_integral_matches_numerical_integration():
    g = 0.4

    def density(y, x):
        return g / (2 * math.pi * (g * g + x * x + y * y) ** 1.5)

    for x0, y0 in ((-0.5, -0.5), (0.5, -0.5), (1.5, 2.5), (-4.5, 3.5)):
        numeric, _ = integrate.dblquad(density, x0, x0 + 1, y0, y0 + 1, epsabs=1e-12, epsrel=1e-10)
        assert abs(psf_pixel_integral(g, x0, x0 + 1, y0, y0 + 1) - numeric) < 1e-6
    assert psf_pixel_integral(g, -1e12, 1e12, -1e12, 1e12) == pytest.approx(1.0, abs=1e-9)


def test_psf_kernel_is_normalised_symmetric_and_truncated():
    g, radius = 0.7, 5.5
    kernel = psf_kernel(g, radius)
    k = 5
    assert kernel.shape == (2 * k + 1, 2 * k + 1)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-15)
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-15)
    assert kernel.argmax() == kernel.size // 2
    assert kernel[0, 0] == 0.0 and kernel[k, 0] > 0.0  # corner at 7.1 px is cut, the edge at 5 px is not
    # Truncation rescales every kept pixel by the same factor.
    integral = psf_pixel_integral(g, 1.5, 2.5, -0.5, 0.5) / psf_pixel_integral(g, -0.5, 0.5, -0.5, 0.5)
    assert kernel[k, k + 2] / kernel[k, k] == pytest.approx(integral, rel=1e-12)


def test_apply_psf_spreads_a_point_into_the_kernel_and_conserves_counts():
    image = np.zeros((64, 72), dtype=np.float32)
    image[30, 40] = 1000.0
    image[20:25, 15:22] = 7.0
    g, radius = 0.5, 8
    out = apply_psf(image, g, radius)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.sum() == pytest.approx(image.sum(), rel=1e-5)
    lone = np.zeros_like(image)
    lone[30, 40] = 1.0
    np.testing.assert_allclose(apply_psf(lone, g, radius)[22:39, 32:49], psf_kernel(g, radius), atol=1e-6)


def test_apply_psf_handles_a_kernel_wider_than_the_image():
    image = np.zeros((5, 7), dtype=np.float32)
    image[2, 3] = 1.0
    np.testing.assert_allclose(apply_psf(image, 0.8, 16), psf_kernel(0.8, 16)[14:19, 13:20], atol=1e-6)


def test_apply_psf_loses_counts_over_the_edge():
    image = np.zeros((32, 32), dtype=np.float32)
    image[0, 0] = 1.0
    out = apply_psf(image, 1.0, 6)
    kernel = psf_kernel(1.0, 6)
    assert out.sum() == pytest.approx(kernel[6:, 6:].sum(), rel=1e-5)
    assert out.min() > -1e-6


def test_saturation_clips_without_wrapping():
    det = Detector(n_slow=16, n_fast=16)
    photons = np.full(det.shape, 1e7)
    low = DetectorResponse(**{**IDEAL, "saturation_adu": 1000, "adc_offset_adu": 40.0})
    assert (detect(photons, low, det, np.random.default_rng(0)) == 1000).all()
    full = pixel_array_response(**{**IDEAL, "adu_per_photon": 3.0})
    assert (detect(photons, full, det, np.random.default_rng(0)) == 65535).all()


def _shadow_distance(det, radius_px, half_width_px):
    """Signed distance (px) of pixel centres to a disc plus an arm along +fast, by brute force."""
    s0, f0 = det.beam_center
    s, f = np.mgrid[0:det.n_slow, 0:det.n_fast].astype(float)
    disc = np.hypot(s - s0, f - f0) - radius_px
    across = np.abs(s - s0) - half_width_px
    arm = np.where(f >= f0, across, np.hypot(np.maximum(across, 0), f0 - f))
    return np.minimum(disc, arm)


def test_beamstop_shadows_the_disc_and_arm_and_nothing_else():
    det = Detector(n_slow=64, n_fast=64, pixel_mm=0.1, beam_center_px=(30.0, 20.0))
    resp = DetectorResponse(beamstop_radius_mm=1.0, beamstop_holder_width_mm=0.5, beamstop_holder_angle_deg=0.0)
    t = beamstop_transmission(resp, det)
    assert t.dtype == np.float32 and t.shape == det.shape
    d = _shadow_distance(det, 10.0, 2.5)
    assert (t[d <= -0.5] == 0).all() and (t[d >= 0.5] == 1).all()
    assert ((t >= 0) & (t <= 1)).all()
    # Shadowed area: the disc plus the part of the arm outside it, out to the detector's edge at f = 63.5.
    arm, _ = integrate.quad(lambda y: 43.5 - math.sqrt(100.0 - y * y), -2.5, 2.5)
    assert (1 - t).sum() == pytest.approx(math.pi * 100.0 + arm, rel=0.01)


def test_beamstop_edge_pixels_are_partly_shadowed():
    det = Detector(n_slow=64, n_fast=64, pixel_mm=0.1, beam_center_px=(30.0, 20.0))
    t = beamstop_transmission(DetectorResponse(beamstop_radius_mm=0.0, beamstop_holder_width_mm=0.45,
                                               beamstop_holder_angle_deg=0.0), det)
    # The arm's edges run along the fast axis at slow = 30 ± 2.25: a quarter of rows 28 and 32 is lit.
    np.testing.assert_allclose(t[[28, 32], 22:], 0.25)
    assert (t[29:32, 22:] == 0).all() and (t[[27, 33], :] == 1).all()


def test_beamstop_holder_angle_turns_the_arm():
    det = Detector(n_slow=64, n_fast=64, pixel_mm=0.1)
    t = beamstop_transmission(DetectorResponse(beamstop_radius_mm=0.5, beamstop_holder_width_mm=0.4,
                                               beamstop_holder_angle_deg=90.0), det)
    assert t[60, 32] == 0 and t[4, 32] == 1 and t[32, 60] == 1 and t[32, 4] == 1


def test_detect_zeroes_the_shadow_only():
    det = Detector(n_slow=64, n_fast=64, pixel_mm=0.1)
    resp = DetectorResponse(**{**IDEAL, "beamstop_radius_mm": 0.8, "beamstop_holder_width_mm": 0.3})
    frame = detect(np.full(det.shape, 50.0), resp, det, np.random.default_rng(4))
    t = beamstop_transmission(resp, det)
    assert (frame[t == 0] == 0).all()
    assert (frame[t == 1] > 0).all()


def test_hot_and_dead_pixels():
    det = Detector(n_slow=200, n_fast=250)
    resp = DetectorResponse(**{**IDEAL, "hot_pixel_fraction": 1e-3, "dead_pixel_fraction": 2e-3,
                               "adc_offset_adu": 40.0, "saturation_adu": 60000})
    _, hot, dead = fixed_pattern(resp, det.shape)
    assert hot.sum() == 50 and dead.sum() == 100 and not (hot & dead).any()
    frame = detect(np.full(det.shape, 10.0), resp, det, np.random.default_rng(5))
    assert (frame[hot] == 60000).all() and (frame[dead] == 0).all()
    assert ((frame[~hot & ~dead] > 0) & (frame[~hot & ~dead] < 60000)).all()


def test_same_seed_same_frame():
    det = Detector(n_slow=64, n_fast=64)
    photons = np.random.default_rng(9).exponential(5.0, det.shape)
    resp = DetectorResponse()
    a, b, c = (detect(photons, resp, det, np.random.default_rng(s)) for s in (3, 3, 4))
    assert a.dtype == np.uint16
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_pixel_array_preset():
    resp = pixel_array_response()
    assert (resp.psf, resp.readout_noise_adu, resp.adc_offset_adu) == ("none", 0.0, 0.0)
    assert pixel_array_response(gain_rms=0.0).gain_rms == 0.0


@pytest.mark.parametrize("field, value", [
    ("psf", "gauss"), ("psf_g_um", -1.0), ("psf_radius_px", 2.5), ("adu_per_photon", 0.0),
    ("gain_rms", 0.5), ("readout_noise_adu", float("nan")), ("saturation_adu", 70000),
    ("adc_offset_adu", 70000.0), ("beamstop_radius_mm", -1.0), ("beamstop_holder_width_mm", -0.1),
    ("beamstop_holder_angle_deg", 720.0), ("hot_pixel_fraction", -1e-3), ("dead_pixel_fraction", 0.5),
    ("pattern_seed", -1),
])
def test_invalid_parameters_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"DetectorResponse.{field} = "):
        DetectorResponse(**{field: value})


def test_fiber_psf_needs_a_width_and_the_offset_must_be_below_saturation():
    with pytest.raises(ValueError, match="psf_g_um"):
        DetectorResponse(psf="fiber", psf_g_um=0.0)
    with pytest.raises(ValueError, match="adc_offset_adu"):
        DetectorResponse(adc_offset_adu=500.0, saturation_adu=400)


def test_invalid_inputs_raise():
    det = Detector(n_slow=8, n_fast=8)
    with pytest.raises(ValueError, match="photons.shape"):
        detect(np.zeros((8, 9)), DetectorResponse(), det, np.random.default_rng(0))
    for bad in (-1.0, np.nan):
        with pytest.raises(ValueError, match="photons: must be ≥ 0"):
            detect(np.full(det.shape, bad), DetectorResponse(), det, np.random.default_rng(0))
    with pytest.raises(ValueError, match="g_px"):
        psf_kernel(0.0, 3)
