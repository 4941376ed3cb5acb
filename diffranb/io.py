"""Reading and writing: simulator parameter files, images and the result records of the reports.

The parameter files are the JSON cases that describe nanoBragg runs (``shared/reference/nanobragg/*.json``):
plain physical units, the same field names, so anyone can check the simulator against nanoBragg.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .sim.amorphous import Background, Sample
from .sim.crystal import Crystal, StructureFactors
from .sim.detector import DetectorResponse
from .sim.geometry import Beam, Detector
from .sim.scene import Scene

#: ``stol_table`` names of nonBragg's amorphous materials, and the Background field each maps to.
AMORPHOUS_TABLES = {"water.stol": "water"}


def load_case(source) -> tuple[Scene, int]:
    """Build a scene from a nanoBragg / nonBragg case description.

    Parameters
    ----------
    source : str, os.PathLike or dict
        A JSON file, or its parsed content.

    Returns
    -------
    scene : Scene
        Noiseless (``response=None``), exact model for Bragg cases.
    mosaic_seed : int
        The case's mosaic seed (0 when it has none).

    Raises
    ------
    ValueError
        For an unknown program or material, or a parameter out of range (naming it).
    """
    case = source if isinstance(source, dict) else json.loads(Path(source).read_text())
    program = case.get("program")
    n = int(case.get("detector_pixels", 512))
    detector = Detector(n_slow=n, n_fast=n, pixel_mm=case["pixel_mm"], distance_mm=case["distance_mm"],
                        beam_center_px=tuple(case["beam_center_px_slow_fast"]),
                        oversample=int(case.get("oversample", 1)))
    if program == "nanoBragg":
        mosaic = case.get("mosaic") or {}
        crystal = Crystal(cell=tuple(case["unit_cell_A_deg"]), cells_abc=tuple(case["cells_abc"]),
                          shape=case.get("xtal_shape", "square"), misset_deg=tuple(case.get("misset_deg_xyz", (0, 0, 0))),
                          mosaic_spread_deg=mosaic.get("spread_deg", 0.0), mosaic_domains=mosaic.get("domains", 1),
                          structure=StructureFactors(default_F=case.get("default_F", 0.0)))
        beam = Beam(wavelength_A=case["wavelength_A"], fluence_ph_per_m2=case.get("fluence_ph_per_m2"),
                    kahn_polarization=case.get("kahn_polarization"))
        return Scene(detector=detector, beam=beam, crystal=crystal, model="exact"), int(mosaic.get("seed", 0))
    if program == "nonBragg":
        table = case.get("stol_table")
        if table not in AMORPHOUS_TABLES:
            raise ValueError(f"stol_table = {table!r}: must be one of {', '.join(AMORPHOUS_TABLES)}")
        # nonBragg's polarisation factor is the unpolarised one, K = 0.
        beam = Beam(wavelength_A=case["wavelength_A"], flux_ph_per_s=case["flux_ph_per_s"],
                    exposure_s=case["exposure_s"], beamsize_mm=case["beamsize_mm"], kahn_polarization=0.0)
        sample = Sample(AMORPHOUS_TABLES[table], thickness_mm=case["sample_thickness_mm"],
                        density_g_cm3=case["density_g_cm3"], molecular_weight=case["molecular_weight"])
        background = Background(others=(sample,))
        return Scene(detector=detector, beam=beam, background=background), 0
    raise ValueError(f"program = {program!r}: must be 'nanoBragg' or 'nonBragg'")


def save_npy(path, image: np.ndarray) -> Path:
    """Write ``image`` to ``path`` (.npy) atomically: a reader never sees half a file.

    Raises
    ------
    OSError
        When the directory does not exist or is not writable; nothing is written then.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, image)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def default_response() -> DetectorResponse:
    """The detector model ``diffranb simulate`` adds when asked for noise."""
    return DetectorResponse()


def load_record(out_dir, keys, producer: str) -> dict | None:
    """The ``metrics.json`` a report function wrote into ``out_dir``; None when there is none (a committed
    full-scale record that a chapter shows only if it exists).

    Parameters
    ----------
    out_dir : str or os.PathLike
    keys : sequence of str
        Keys the record must have.
    producer : str
        The function that writes such records, named in the error when a key is missing.
    """
    path = Path(out_dir) / "metrics.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{str(path)!r} is not a record of {producer} (no {', '.join(map(repr, missing))})")
    return record
