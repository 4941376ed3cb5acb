"""Interactive explorers: ipywidgets around the same functions the book's static figures call.

They need a live kernel (Jupyter, Voila); the published HTML shows a static figure at the defaults instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import ipywidgets as w
import numpy as np

from . import sim, viz


@dataclass(frozen=True)
class Control:
    """One knob of the explorer: how to read it off a scene, write it into one, and draw it."""

    get: Callable[[Any], Any]  # scene -> value
    set: Callable[[Any, Any], Any]  # (scene, value) -> new scene
    make: Callable[[Any], w.ValueWidget]  # initial value -> widget
    needs_crystal: bool = False


def _slider(cls, description, lo, hi, step, **kw):
    def make(value):
        return cls(value=value, min=min(lo, value), max=max(hi, value), step=step, description=description,
                   continuous_update=False, style={"description_width": "11em"},
                   layout=w.Layout(width="30em"), **kw)
    return make


def _log_slider(description, lo_exp, hi_exp):
    def make(value):
        exp = np.log10(value)
        return w.FloatLogSlider(value=value, base=10, min=min(lo_exp, np.floor(exp)), max=max(hi_exp, np.ceil(exp)),
                                step=0.1, description=description, readout_format=".1e", continuous_update=False,
                                style={"description_width": "11em"}, layout=w.Layout(width="30em"))
    return make


def _setter(part, name):
    """(scene, x) -> the scene with field ``name`` of its ``part`` (beam, detector, …) set to x."""
    return lambda scene, x: replace(scene, **{part: replace(getattr(scene, part), **{name: x})})


def _with_noise(base_response):
    on = base_response if base_response is not None else sim.DetectorResponse()
    return lambda scene, x: replace(scene, response=on if x else None)


def controls(base) -> dict[str, Control]:
    """The explorer's knobs for a base scene, by name (the keyword :func:`explore_simulator` accepts)."""
    return {
        "wavelength_A": Control(lambda s: s.beam.wavelength_A, _setter("beam", "wavelength_A"),
                                _slider(w.FloatSlider, "wavelength (Å)", 0.5, 2.5, 0.01)),
        "distance_mm": Control(lambda s: s.detector.distance_mm, _setter("detector", "distance_mm"),
                               _slider(w.FloatSlider, "distance (mm)", 50.0, 400.0, 5.0)),
        "cells_per_edge": Control(lambda s: int(s.crystal.cells_abc[0]),
                                  lambda s, x: _setter("crystal", "cells_abc")(s, (x, x, x)),
                                  _slider(w.IntSlider, "crystal (cells/edge)", 5, 100, 1), needs_crystal=True),
        "mosaic_spread_deg": Control(lambda s: s.crystal.mosaic_spread_deg, _setter("crystal", "mosaic_spread_deg"),
                                     _slider(w.FloatSlider, "mosaic spread (deg)", 0.0, 2.0, 0.05),
                                     needs_crystal=True),
        "fluence_ph_per_m2": Control(lambda s: s.beam.fluence, _setter("beam", "fluence_ph_per_m2"),
                                     _log_slider("fluence (ph/m²)", 18, 26)),
        "water_thickness_um": Control(lambda s: s.background.water_thickness_um,
                                      _setter("background", "water_thickness_um"),
                                      _slider(w.FloatSlider, "water (µm)", 0.0, 100.0, 1.0)),
        "b_factor_A2": Control(lambda s: s.crystal.structure.b_factor_A2,
                               lambda s, x: _setter("crystal", "structure")(s, replace(s.crystal.structure,
                                                                                      b_factor_A2=x)),
                               _slider(w.FloatSlider, "B-factor (Å²)", 0.0, 100.0, 1.0), needs_crystal=True),
        "noise": Control(lambda s: s.response is not None, _with_noise(base.response),
                         lambda x: w.Checkbox(value=x, description="detector noise", indent=False)),
    }


class SimulatorExplorer(w.VBox):
    """A rendered frame beside the knobs of :func:`controls`; every change re-renders it.

    Attributes
    ----------
    base : sim.Scene
        The scene the knobs start from; what no knob touches is taken from it.
    controls : dict of name -> ipywidgets widget
    image : ipywidgets.Image
        The frame as a PNG (:func:`diffranb.viz.to_png_bytes`).
    status : ipywidgets.Label
        Shape, unit and render time of the frame on show, or why it could not be rendered.
    """

    def __init__(self, base, *, seed: int = 0, scale: str = "sqrt", **values):
        super().__init__()
        specs = controls(base)
        unknown = sorted(set(values) - set(specs))
        if unknown:
            raise TypeError(f"unknown explorer controls {unknown}; choose from {sorted(specs)}")
        if base.crystal is None:
            specs = {k: c for k, c in specs.items() if not c.needs_crystal}
        self.base, self.seed, self.scale, self._specs = base, seed, scale, specs
        self.controls = {k: c.make(values.get(k, c.get(base))) for k, c in specs.items()}
        self.image = w.Image(format="png", layout=w.Layout(width="420px", height="420px"))
        self.status = w.Label()
        self.children = [w.HBox([self.image, w.VBox(list(self.controls.values()))]), self.status]
        for control in self.controls.values():
            control.observe(self.render, names="value")
        self.render()

    @property
    def scene(self):
        """The base scene with every knob that has moved from its starting value applied."""
        scene = self.base
        for name, spec in self._specs.items():
            value = self.controls[name].value
            if value != spec.get(self.base):
                scene = spec.set(scene, value)
        return scene

    def render(self, change=None):
        """Render the current scene into :attr:`image` (an observer of every knob)."""
        try:
            scene = self.scene
        except ValueError as err:  # a combination the dataclasses reject: say so and keep the last frame
            self.status.value = f"not rendered: {err}"
            return
        start = time.perf_counter()
        frame = sim.render(scene, seed=self.seed)
        seconds = time.perf_counter() - start
        self.image.value = viz.to_png_bytes(frame, scale=self.scale)
        unit = "photons" if scene.response is None else "ADU"
        self.status.value = f"{frame.shape[0]}×{frame.shape[1]} px, {unit}, {self.scale} scale: rendered in " \
                            f"{seconds * 1e3:.0f} ms"


def explore_simulator(scene=None, *, seed: int = 0, scale: str = "sqrt", **overrides) -> SimulatorExplorer:
    """Knobs for the main physical parameters of a frame, and the frame, re-rendered on every change.

    Parameters
    ----------
    scene : sim.Scene, optional
        Where the knobs start; defaults to :func:`diffranb.sim.example_scene`.
    seed : int
        Seed of every render, so that a change in the picture comes from the knob, not the noise.
    scale : {"sqrt", "log", "linear"}
        Colour scale of the frame.
    **overrides
        Starting values by knob name: ``wavelength_A`` (Å), ``distance_mm`` (mm), ``cells_per_edge``
        (unit cells per edge of a mosaic block; the number of blocks stays, so the crystal grows with it),
        ``mosaic_spread_deg`` (deg), ``fluence_ph_per_m2`` (photons/m², log slider), ``water_thickness_um``
        (µm), ``b_factor_A2`` (Å²; changes the picture only with Wilson structure factors), ``noise`` (bool:
        the detector response, or noiseless photons).

    Returns
    -------
    SimulatorExplorer
        An ipywidgets VBox; display it as the last expression of a cell.
    """
    return SimulatorExplorer(sim.example_scene() if scene is None else scene, seed=seed, scale=scale, **overrides)
