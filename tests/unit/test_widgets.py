import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from diffranb import sim, widgets


@pytest.fixture(scope="module")
def small_scene():
    """The example scene on a 48×48 detector, so that each render takes milliseconds."""
    scene = sim.example_scene()
    return replace(scene, detector=replace(scene.detector, n_slow=48, n_fast=48))


@pytest.fixture
def render_calls(monkeypatch):
    calls = []
    real = sim.render

    def counting(scene, seed=0, **kw):
        calls.append(scene)
        return real(scene, seed=seed, **kw)

    monkeypatch.setattr(sim, "render", counting)
    return calls


def png_shape(png: bytes):
    return np.asarray(Image.open(io.BytesIO(png))).shape[:2]


def test_constructing_renders_once(small_scene, render_calls):
    explorer = widgets.explore_simulator(small_scene)
    assert len(render_calls) == 1
    assert png_shape(explorer.image.value) == (48, 48)
    assert "rendered in" in explorer.status.value and "ADU" in explorer.status.value


def test_knobs_start_at_the_scene_values(small_scene):
    explorer = widgets.explore_simulator(small_scene)
    c = explorer.controls
    assert c["wavelength_A"].value == small_scene.beam.wavelength_A
    assert c["distance_mm"].value == small_scene.detector.distance_mm
    assert c["cells_per_edge"].value == small_scene.crystal.cells_abc[0]
    assert c["mosaic_spread_deg"].value == small_scene.crystal.mosaic_spread_deg
    assert c["fluence_ph_per_m2"].value == pytest.approx(small_scene.beam.fluence)
    assert c["water_thickness_um"].value == small_scene.background.water_thickness_um
    assert c["b_factor_A2"].value == small_scene.crystal.structure.b_factor_A2
    assert c["noise"].value is True
    assert all(getattr(k, "continuous_update", False) is False for k in c.values())
    assert explorer.scene == small_scene


def test_moving_a_slider_rerenders_a_different_image(small_scene, render_calls):
    explorer = widgets.explore_simulator(small_scene, noise=False)
    before = explorer.image.value
    explorer.controls["distance_mm"].value = 60.0
    assert len(render_calls) == 2
    assert render_calls[-1].detector.distance_mm == 60.0
    assert explorer.image.value != before


READ = {
    "wavelength_A": lambda s: s.beam.wavelength_A,
    "distance_mm": lambda s: s.detector.distance_mm,
    "cells_per_edge": lambda s: s.crystal.cells_abc,
    "mosaic_spread_deg": lambda s: s.crystal.mosaic_spread_deg,
    "fluence_ph_per_m2": lambda s: s.beam.fluence,
    "water_thickness_um": lambda s: s.background.water_thickness_um,
    "b_factor_A2": lambda s: s.crystal.structure.b_factor_A2,
    "noise": lambda s: s.response is not None,
}


@pytest.mark.parametrize("name, value, expected", [
    ("wavelength_A", 1.3, 1.3),
    ("distance_mm", 200.0, 200.0),
    ("cells_per_edge", 12, (12, 12, 12)),
    ("mosaic_spread_deg", 1.0, 1.0),
    ("fluence_ph_per_m2", 1e24, 1e24),
    ("water_thickness_um", 50.0, 50.0),
    ("b_factor_A2", 60.0, 60.0),
    ("noise", False, False),
])
def test_each_knob_sets_its_field_and_nothing_else(small_scene, name, value, expected):
    assert set(READ) == set(widgets.controls(small_scene))
    explorer = widgets.explore_simulator(small_scene)
    explorer.controls[name].value = value
    assert READ[name](explorer.scene) == pytest.approx(expected)
    for other, read in READ.items():
        if other != name:
            assert read(explorer.scene) == pytest.approx(read(small_scene)), other


def test_noiseless_frames_are_shown_in_photons(small_scene):
    explorer = widgets.explore_simulator(small_scene, noise=False)
    assert "photons" in explorer.status.value


def test_a_scene_without_crystal_has_no_crystal_knobs(small_scene):
    explorer = widgets.explore_simulator(replace(small_scene, crystal=None))
    assert "mosaic_spread_deg" not in explorer.controls
    assert png_shape(explorer.image.value) == (48, 48)


def test_unknown_overrides_are_refused(small_scene):
    with pytest.raises(TypeError, match="wavelength"):
        widgets.explore_simulator(small_scene, wavelength=1.0)
