from dataclasses import replace

import numpy as np
import pytest

from diffranb import sim
from diffranb.sim.scene import Scene, example_scene, expected_photons, render

SMALL = sim.Detector(n_slow=96, n_fast=96, distance_mm=60.0)


@pytest.fixture(scope="module")
def scene():
    return replace(example_scene(3), detector=SMALL)


def test_same_seed_gives_the_same_frame(scene):
    a, b = render(scene, seed=11), render(scene, seed=11)
    assert a.dtype == np.uint16 and a.shape == (96, 96)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render(scene, seed=12))


def test_noiseless_is_the_expected_photons(scene):
    photons = render(scene, seed=0, noiseless=True)
    assert photons.dtype == np.float32
    assert np.array_equal(photons, expected_photons(scene))


def test_frame_mean_follows_the_expected_photons(scene):
    # Averaged over the detector, ADU ≈ offset + gain·photons (the gain pattern has mean 1).
    resp = scene.response
    photons = expected_photons(scene) * sim.detector.beamstop_transmission(resp, scene.detector)
    frame = render(scene, seed=5).astype(float)
    expected = resp.adc_offset_adu + resp.adu_per_photon * photons.mean()
    assert frame.mean() == pytest.approx(expected, rel=0.05)


def test_dark_frame_has_no_photons(scene):
    dark = replace(scene, x_rays=False)
    assert expected_photons(dark).max() == 0.0
    frame = render(dark, seed=1).astype(float)
    assert np.median(frame) == pytest.approx(scene.response.adc_offset_adu, abs=3 * scene.response.readout_noise_adu)


def test_no_crystal_means_no_spots(scene):
    rings = expected_photons(replace(scene, crystal=None))
    both = expected_photons(scene)
    assert (both - rings).max() > 10 * rings.max()  # the crystal adds spots well above the rings
    assert rings.min() > 0  # water and air scatter everywhere


def test_orientation_follows_the_seed():
    assert example_scene(1).crystal.rotation != example_scene(2).crystal.rotation
    assert example_scene(1) == example_scene(1)


@pytest.mark.parametrize("kwargs, field", [(dict(model="nanobragg"), "model"), (dict(crystal="lysozyme"), "crystal"),
                                           (dict(response=3), "response")])
def test_scene_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=f"Scene.{field}"):
        Scene(**kwargs)
