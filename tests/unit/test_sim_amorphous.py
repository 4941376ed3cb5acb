"""Amorphous and powder background: water, air and ice Ih curves, images, and nanoBragg's nonBragg water ring."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from diffranb.sim import amorphous as am
from diffranb.sim.atoms import Z, form_factor, incoherent
from diffranb.sim.geometry import Beam, Detector

REF_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "nanobragg"
needs_v4 = pytest.mark.skipif(not (REF_DIR / "v4_water_ring.npz").exists(),
                              reason="nanoBragg reference images (../shared/reference/nanobragg) not present")

S_GRID = np.linspace(0.0, 2.0, 4001)


def radial_profile(image, center):
    """Azimuthal mean in 1-px rings about ``center`` (slow, fast); returns (radius_px, mean)."""
    s, f = np.indices(image.shape)
    ring = np.rint(np.hypot(s - center[0], f - center[1])).astype(int).ravel()
    counts = np.bincount(ring)
    return np.arange(len(counts)), np.bincount(ring, image.ravel()) / np.maximum(counts, 1)


# --- atoms.incoherent ---------------------------------------------------------------------------------

@pytest.mark.parametrize("element", ["H", "C", "N", "O", "S", "Ar"])
def test_incoherent_rises_from_zero_towards_Z(element):
    S = incoherent(element, S_GRID)
    assert S[0] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(S) >= -1e-9)
    assert np.all(S <= Z[element] + 1e-9)


@pytest.mark.parametrize("element", ["H", "N", "O"])
def test_incoherent_reaches_Z_for_light_atoms(element):
    # By sinθ/λ = 2 Å⁻¹ every electron of a first-row atom scatters independently.
    assert incoherent(element, 2.0) == pytest.approx(Z[element], rel=0.03)


def test_hydrogen_incoherent_is_one_minus_f_squared():
    # For one electron S = 1 − f²: the exact 1s result against the independent Cromer–Mann fit of f.
    s = np.linspace(0.0, 1.0, 101)
    assert np.allclose(incoherent("H", s), 1.0 - form_factor("H", s) ** 2, atol=0.01)


def test_incoherent_rejects_unknown_elements():
    with pytest.raises(ValueError, match="element = 'Fe'"):
        incoherent("Fe", 0.1)


# --- curves ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("curve", [am.water_F2, am.air_F2, am.ice_F2])
def test_curves_positive_and_finite(curve):
    F2 = curve(S_GRID)
    assert F2.shape == S_GRID.shape and np.all(np.isfinite(F2))
    assert np.all(F2[1:] > 0)


def test_curves_accept_scalars():
    assert isinstance(am.water_F2(0.16), float) and isinstance(am.air_F2(0.16), float)
    assert isinstance(am.ice_F2(0.16), float) and isinstance(am.water_S_OO(0.16), float)


def test_water_main_peak_at_016_and_shoulder_near_022():
    s = np.linspace(0.05, 0.5, 4501)
    F2 = am.water_F2(s)
    assert s[np.argmax(F2)] == pytest.approx(0.16, abs=0.01)
    # The tetrahedral second shell: past the peak the fall pauses (the slope has a local maximum) in the
    # shoulder region before falling steeply again.
    slope = np.gradient(F2, s)
    window = (s >= 0.19) & (s <= 0.24)
    i = np.argmax(np.where(window, slope, -np.inf))
    assert window[i - 5] and window[i + 5]  # an interior maximum, not an end of the window
    assert slope[i] > 0.25 * slope[(s > 0.16) & (s < 0.3)].min()


def test_water_long_wavelength_limit_is_the_compressibility():
    S0 = am.water_S0()
    assert S0 == pytest.approx(0.064, abs=0.005)  # ρ k_B T κ_T of ambient water
    assert am.water_S_OO(0.0) == pytest.approx(S0, rel=1e-6)
    # Forward, a molecule's ten electrons scatter coherently, suppressed by the density fluctuations.
    assert am.water_F2(0.0, compton=False) == pytest.approx(10.0**2 * S0, rel=0.01)
    assert am.water_F2(0.0) == pytest.approx(am.water_F2(0.0, compton=False))


def test_water_structure_factor_tends_to_one_and_gOO_is_physical():
    assert am.water_S_OO(1.5) == pytest.approx(1.0, abs=0.02)
    r = np.arange(0.0, 15.0, 0.005)
    g = am.water_g_OO(r)
    assert np.all(g[r < 2.0] < 1e-3)  # excluded core
    assert g[np.argmax(g)] == pytest.approx(2.5, abs=0.1) and r[np.argmax(g)] == pytest.approx(2.8, abs=0.02)
    # About four and a half neighbours within the first shell (4.3–4.7 measured).
    rho = am.WATER_DENSITY_G_CM3 / am.WATER_MW * 6.02214076e23 * 1e-24
    n = np.sum(4 * np.pi * rho * r[r < 3.3] ** 2 * g[r < 3.3]) * 0.005
    assert 4.2 < n < 4.8


def test_water_compton_part_tends_to_ten_electrons():
    compton = am.water_F2(2.0) - am.water_F2(2.0, compton=False)
    assert compton == pytest.approx(10.0, rel=0.03)


def test_air_is_an_ideal_gas_of_molecules():
    electrons = {"N2": 14, "O2": 16, "Ar": 18}
    expected = sum(x * electrons[m] ** 2 for m, x in am.AIR_COMPOSITION.items())
    assert am.air_F2(0.0, compton=False) == pytest.approx(expected, rel=0.005)  # S(q) = 1: no suppression
    assert am.air_density_g_cm3() == pytest.approx(1.204e-3, rel=0.005)  # dry air at 20 °C, 1 atm
    # Far out the two atoms of a molecule barely interfere: Σ f², give or take the j₀(Qd) ≤ 1/(Qd) fringe.
    s = 1.5
    atoms_only = sum(x * (form_factor("Ar", s) ** 2 if m == "Ar" else 2 * form_factor(m[0], s) ** 2)
                     for m, x in am.AIR_COMPOSITION.items())
    fringe = 1.0 / (4 * np.pi * s * min(am.BOND_LENGTH_A.values()))
    assert am.air_F2(s, compton=False) == pytest.approx(atoms_only, rel=fringe)


def test_ice_reflections_follow_the_hexagonal_cell():
    d, m, F2, hkl = am.ice_reflections(0.27)
    assert d[:7] == pytest.approx([3.90, 3.66, 3.44, 2.67, 2.25, 2.07, 1.95], abs=0.01)
    assert list(m[:4]) == [6, 2, 12, 12]
    assert [tuple(abs(x) for x in row) for row in hkl[:3]] == [(1, 0, 0), (0, 0, 2), (1, 0, 1)]
    # 6₃ screw axis: (00l) with l odd is absent.
    assert not np.any(np.isclose(d, am.ICE_C_A)) and not np.any(np.isclose(d, am.ICE_C_A / 3))


def test_ice_ring_carries_its_integrated_weight():
    d, m, F2, _ = am.ice_reflections(0.2)
    G = 1.0 / d[0]
    v_cell = math.sqrt(3) / 2 * am.ICE_A_A**2 * am.ICE_C_A
    weight = m[0] * F2[0] / (am.ICE_Z * v_cell * 4 * np.pi * G**2)
    s = np.linspace(G / 2 - 0.004, G / 2 + 0.004, 8001)
    for size_nm in (20.0, 200.0):
        coherent = am.ice_F2(s, crystallite_nm=size_nm, compton=False)
        assert np.trapezoid(coherent, s) == pytest.approx(weight / 2, rel=1e-3)  # ∫ds = ½∫d|q|


# --- images ---------------------------------------------------------------------------------------------

DET = Detector(n_slow=128, n_fast=128, pixel_mm=0.172, distance_mm=30.0)
BEAM = Beam(wavelength_A=1.0, fluence_ph_per_m2=1e24, beamsize_mm=0.01, kahn_polarization=0.9)


def test_ice_rings_at_bragg_radii_on_the_detector():
    det = Detector(n_slow=512, n_fast=512, pixel_mm=0.172, distance_mm=80.0)
    img = am.background_photons(am.Background(ice_thickness_um=5.0), BEAM, det)
    radius, profile = radial_profile(img, det.beam_center)
    peaks = radius[1:-1][(profile[1:-1] > profile[:-2]) & (profile[1:-1] >= profile[2:])]
    for d_A in (3.90, 3.66, 3.44, 2.67, 2.25, 2.07, 1.92):
        two_theta = 2 * math.asin(BEAM.wavelength_A / (2 * d_A))
        expected_px = det.distance_mm * math.tan(two_theta) / det.pixel_mm
        assert np.min(np.abs(peaks - expected_px)) <= 1.5, d_A


def test_narrow_rings_keep_their_intensity_on_coarse_pixels():
    # Rings far narrower than a pixel still deposit their whole weight.
    fine = am.background_photons(am.Background(ice_thickness_um=5.0, ice_crystallite_nm=1000.0), BEAM, DET)
    broad = am.background_photons(am.Background(ice_thickness_um=5.0, ice_crystallite_nm=30.0), BEAM, DET)
    assert fine.sum() == pytest.approx(broad.sum(), rel=0.01)


def test_background_is_linear_in_thickness_and_fluence():
    one = am.background_photons(am.Background(water_thickness_um=5.0), BEAM, DET)
    two = am.background_photons(am.Background(water_thickness_um=10.0), BEAM, DET)
    assert np.allclose(two, 2 * one, rtol=1e-12)
    brighter = Beam(wavelength_A=1.0, fluence_ph_per_m2=3e24, beamsize_mm=0.01, kahn_polarization=0.9)
    assert np.allclose(am.background_photons(am.Background(water_thickness_um=5.0), brighter, DET), 3 * one,
                       rtol=1e-12)


def test_air_scales_with_path_length():
    ten = am.background_photons(am.Background(air_path_mm=10.0), BEAM, DET)
    assert np.allclose(am.background_photons(am.Background(air_path_mm=40.0), BEAM, DET), 4 * ten, rtol=1e-12)


def test_materials_add_up():
    parts = [am.background_photons(am.Background(**{k: x}), BEAM, DET)
             for k, x in (("water_thickness_um", 5.0), ("air_path_mm", 20.0), ("ice_thickness_um", 1.0))]
    both = am.background_photons(am.Background(water_thickness_um=5.0, air_path_mm=20.0, ice_thickness_um=1.0),
                                 BEAM, DET)
    assert np.allclose(both, sum(parts), rtol=1e-10)


def test_beamsize_enters_only_through_the_illuminated_volume():
    bg = am.Background(water_thickness_um=5.0)
    small = am.background_photons(bg, BEAM, DET)
    wide = Beam(wavelength_A=1.0, fluence_ph_per_m2=1e24, beamsize_mm=0.02, kahn_polarization=0.9)
    assert np.allclose(am.background_photons(bg, wide, DET), 4 * small, rtol=1e-12)  # same fluence, 4× sample
    # Same photons through a wider beam: the fluence drops as the illuminated sample grows, so no change.
    narrow = Beam(wavelength_A=1.0, flux_ph_per_s=1e12, exposure_s=0.1, beamsize_mm=0.01)
    spread = Beam(wavelength_A=1.0, flux_ph_per_s=1e12, exposure_s=0.1, beamsize_mm=0.03)
    assert np.allclose(am.background_photons(bg, spread, DET), am.background_photons(bg, narrow, DET), rtol=1e-12)


def test_empty_background_is_zero():
    img = am.background_photons(am.Background(), BEAM, DET)
    assert img.shape == DET.shape and not img.any()


def test_sample_matches_background_for_the_same_material():
    via_sample = am.sample_photons(am.Sample("water", thickness_mm=0.005), BEAM, DET)
    assert np.allclose(via_sample, am.background_photons(am.Background(water_thickness_um=5.0), BEAM, DET))


def test_pixel_value_is_r_e2_phi_N_F2_P_Omega_on_a_smooth_curve():
    det = Detector(n_slow=9, n_fast=9, pixel_mm=0.1, distance_mm=50.0)
    beam = Beam(wavelength_A=1.0, fluence_ph_per_m2=1e24, beamsize_mm=0.01)  # polarisation off
    img = am.sample_photons(am.Sample("water", thickness_mm=0.01), beam, det)
    L, px = det.distance_mm, det.pixel_mm
    s0, f0 = det.beam_center
    dy, dz = (6 - s0) * px, (7 - f0) * px
    R = math.sqrt(L * L + dy * dy + dz * dz)
    stol = math.sin(0.5 * math.acos(L / R)) / beam.wavelength_A
    omega = px * px / R**2 * (L / R)
    n_mol = am.molecules_in_beam(0.01, am.WATER_DENSITY_G_CM3, am.WATER_MW, 0.01)
    expected = 7.94079248018965e-30 * 1e24 * n_mol * am.water_F2(stol) * omega
    assert img[6, 7] == pytest.approx(expected, rel=1e-4)


def test_detector_beyond_the_tables_is_refused():
    short = Beam(wavelength_A=0.2, fluence_ph_per_m2=1e24)
    close = Detector(n_slow=64, n_fast=64, pixel_mm=0.5, distance_mm=5.0)
    with pytest.raises(ValueError, match="sinθ/λ"):
        am.background_photons(am.Background(water_thickness_um=1.0), short, close)


# --- validation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, allowed", [
    ("water_thickness_um", -1.0, "[0, 10000]"),
    ("air_path_mm", float("nan"), "a finite number"),
    ("ice_thickness_um", 2e4, "[0, 10000]"),
    ("ice_crystallite_nm", 0.5, "[1, 100000]"),
])
def test_background_validation_names_field_value_and_range(field, value, allowed):
    with pytest.raises(ValueError) as err:
        am.Background(**{field: value})
    message = str(err.value)
    assert f"Background.{field} = {value!r}" in message and allowed in message


def test_sample_validation():
    with pytest.raises(ValueError, match=r"Sample.material = 'glass': must be one of 'water', 'air', 'ice'"):
        am.Sample("glass", thickness_mm=1.0)
    with pytest.raises(ValueError, match=r"Sample.density_g_cm3 = 0.0: must be in \(0, 30\]"):
        am.Sample("water", thickness_mm=1.0, density_g_cm3=0.0)
    with pytest.raises(ValueError, match=r"Sample.thickness_mm = -0.1"):
        am.Sample("ice", thickness_mm=-0.1)


# --- nanoBragg's nonBragg water ring (v4) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def v4():
    params = json.loads((REF_DIR / "v4_water_ring.json").read_text())
    ref = np.load(REF_DIR / "v4_water_ring.npz")["image"].astype(np.float64)
    n = params["detector_pixels"]
    det = Detector(n_slow=n, n_fast=n, pixel_mm=params["pixel_mm"], distance_mm=params["distance_mm"],
                   beam_center_px=tuple(params["beam_center_px_slow_fast"]))
    beam = Beam(wavelength_A=params["wavelength_A"], flux_ph_per_s=params["flux_ph_per_s"],
                exposure_s=params["exposure_s"], beamsize_mm=params["beamsize_mm"], kahn_polarization=0.0)
    sample = am.Sample("water", thickness_mm=params["sample_thickness_mm"], density_g_cm3=params["density_g_cm3"],
                       molecular_weight=params["molecular_weight"])
    ours = am.sample_photons(sample, beam, det)
    assert ours.shape == ref.shape
    _, ref_profile = radial_profile(ref, det.beam_center)
    _, our_profile = radial_profile(ours, det.beam_center)
    return ref_profile, our_profile


def _peak_radius(profile):
    i = int(np.argmax(profile))
    y0, y1, y2 = profile[i - 1:i + 2]
    return i + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)  # parabola through the top three rings


@needs_v4
def test_v4_water_ring_peak_radius_within_2_percent(v4):
    ref_profile, our_profile = v4
    assert _peak_radius(our_profile) == pytest.approx(_peak_radius(ref_profile), rel=0.02)


@needs_v4
def test_v4_water_ring_profile_within_10_percent_above_half_maximum(v4):
    ref_profile, our_profile = v4
    strong = ref_profile >= 0.5 * ref_profile.max()
    assert strong.sum() > 100
    rel = np.abs(our_profile[strong] / ref_profile[strong] - 1.0)
    assert rel.max() <= 0.10
