"""Bragg scattering from a crystal: nanoBragg's exact pixel-by-pixel model and a fast reflection-by-reflection
model for dataset generation.

Both return the expected photons per pixel, ``I = r_e²·Φ·n_blocks·⟨F²·F_latt²⟩·P·Ω``, the average taken over
sub-pixels, beam sources and mosaic domains (nanoBragg's definition).

**Exact model** (:func:`bragg_exact`): every pixel, sub-pixel, source and Monte Carlo mosaic domain; the lattice
transform of :mod:`diffranb.sim.lattice`. It reproduces nanoBragg's images to float precision.

**Fast model** (:func:`bragg_fast`): the mosaic, beam and pixel averages done analytically. Each reciprocal
lattice point G carries the integrated weight ∫F_latt² d³q = Na·Nb·Nc / V_cell spread as a 3-D Gaussian in q
whose covariance is the sum of

- the lattice transform: nanoBragg's ``gauss`` spot, Σ_L⁻¹ = (4/0.63)·Σᵢ Nᵢ² aᵢaᵢᵀ;
- the mosaic spread: small rotations move G perpendicular to itself, σ_m²(|G|²I − GGᵀ), with σ_m the rms
  rotation component of the Monte Carlo model (:func:`crystal.mosaic_angle_rms_rad`);
- the bandpass, which scales q along itself: σ_λ²·GGᵀ, σ_λ = (Δλ/λ)/√12 (uniform band);
- the divergence, which tilts the incident beam: (σ_d/λ)²(I − x̂x̂ᵀ), σ_d = divergence/4 (uniform disc);
- the pixel: its box footprint on the Ewald sphere, px²/(12R²λ²)·(u_f u_fᵀ + u_s u_sᵀ).

The pixel value is that Gaussian at the pixel's q, so a spot's integrated signal is exact whatever its size
relative to a pixel, and the cost scales with the number of reflections near the Ewald sphere, not with
pixels × domains. G = 0 is not drawn: forward scattering coincides with the direct beam, which the beamstop
takes (the exact model, like nanoBragg, does include it).

References
----------
J. M. Holton, K. A. Frankel, Acta Cryst. D66, 393–408 (2010). https://doi.org/10.1107/S0907444910007262
N. K. Sauter et al., "Improved crystal orientation and physical properties from single-shot XFEL stills",
Acta Cryst. D70, 3299–3309 (2014). https://doi.org/10.1107/S1399004714024134 (mosaic rotation of G).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

from .constants import R_E_SQ_M2
from .crystal import Crystal, amplitude_source, mosaic_angle_rms_rad, mosaic_rotations, structure_amplitude
from .geometry import Beam, Detector, beam_sources, pixel_factor, polarization, solid_angle_sr
from .lattice import SHAPE_CODES, lattice_factor

#: Gaussian spots are drawn out to this many standard deviations (exp(−½·4.5²) ≈ 4e-5 of the peak).
CUTOFF_SIGMA = 4.5
#: Largest half-width of the pixel window drawn around one spot, pixels.
MAX_HALF_WINDOW = 96


@numba.njit(cache=True, parallel=True)
def _exact_kernel(ns, nf, s_beam, f_beam, pixel_mm, distance_mm, oversample, src_dir, src_lam, src_w,
                  abc, na, nb, nc, shape, kahn, sf_mode, default_F, grid, seed, wilson_mean):
    out = np.zeros((ns, nf))
    n_dom = abc.shape[0]
    n_src = src_dir.shape[0]
    for i in numba.prange(ns):
        for j in range(nf):
            acc = 0.0
            omega = 0.0
            polar = 0.0
            for si in range(oversample):
                for fi in range(oversample):
                    ds = (si + 0.5) / oversample - 0.5
                    df = (fi + 0.5) / oversample - 0.5
                    px = distance_mm
                    py = -(i + ds - s_beam) * pixel_mm
                    pz = (j + df - f_beam) * pixel_mm
                    r = math.sqrt(px * px + py * py + pz * pz)
                    dx, dy, dz = px / r, py / r, pz / r
                    if si == 0 and fi == 0:
                        omega = solid_angle_sr(px, py, pz, pixel_mm, distance_mm)
                        polar = polarization(dx, dy, dz, kahn)
                    for s in range(n_src):
                        lam = src_lam[s]
                        qx = (dx - src_dir[s, 0]) / lam
                        qy = (dy - src_dir[s, 1]) / lam
                        qz = (dz - src_dir[s, 2]) / lam
                        stol = 0.5 * math.sqrt(qx * qx + qy * qy + qz * qz)
                        sub = 0.0
                        for m in range(n_dom):
                            h = abc[m, 0, 0] * qx + abc[m, 0, 1] * qy + abc[m, 0, 2] * qz
                            k = abc[m, 1, 0] * qx + abc[m, 1, 1] * qy + abc[m, 1, 2] * qz
                            l = abc[m, 2, 0] * qx + abc[m, 2, 1] * qy + abc[m, 2, 2] * qz
                            fl = lattice_factor(h, k, l, na, nb, nc, shape)
                            f = structure_amplitude(int(math.floor(h + 0.5)), int(math.floor(k + 0.5)),
                                                    int(math.floor(l + 0.5)), stol, sf_mode, default_F, grid,
                                                    seed, wilson_mean)
                            sub += f * f * fl * fl
                        acc += src_w[s] * sub
            out[i, j] = acc / (oversample * oversample * n_dom) * omega * polar
    return out


def bragg_exact(crystal: Crystal, beam: Beam, detector: Detector, *, mosaic_seed: int = 0) -> np.ndarray:
    """Expected Bragg photons per pixel, computed as nanoBragg does.

    Every pixel is sampled at ``detector.oversample``² sub-pixels; each beam source (divergence × bandpass,
    :func:`geometry.beam_sources`) and each of ``crystal.mosaic_domains`` Monte Carlo domains
    (:func:`crystal.mosaic_rotations`, seeded by ``mosaic_seed``) contributes F²·F_latt² at the pixel's
    scattering vector; Ω and P are taken once per pixel at its first sub-pixel.

    Parameters
    ----------
    crystal : Crystal
    beam : Beam
    detector : Detector
    mosaic_seed : int
        Seed of the domain draws (only used when the mosaic spread is non-zero).

    Returns
    -------
    (n_slow, n_fast) float32, photons
    """
    src_dir, src_lam, src_w = beam_sources(beam)
    abc = crystal.real_vectors()
    if crystal.mosaic_spread_deg > 0 and crystal.mosaic_domains > 1:
        rots = mosaic_rotations(crystal.mosaic_spread_deg, crystal.mosaic_domains,
                                np.random.default_rng(mosaic_seed))
        abc_dom = np.einsum("mij,nj->mni", rots, abc)
    else:
        abc_dom = abc[None]
    stol_max = 1.0 / float(src_lam.min())
    amp = amplitude_source(crystal, stol_max)
    s_beam, f_beam = detector.beam_center
    na, nb, nc = (float(x) for x in crystal.cells_abc)
    img = _exact_kernel(detector.n_slow, detector.n_fast, s_beam, f_beam, detector.pixel_mm,
                        detector.distance_mm, detector.oversample, src_dir, src_lam, src_w,
                        np.ascontiguousarray(abc_dom), na, nb, nc, SHAPE_CODES[crystal.shape],
                        beam.polarization_factor_K, *amp)
    return (img * (R_E_SQ_M2 * beam.fluence * crystal.n_blocks)).astype(np.float32)


@numba.njit(cache=True, inline="always")
def _inv3(m):
    """Inverse and determinant of a symmetric positive-definite 3×3 matrix."""
    a, b, c = m[0, 0], m[0, 1], m[0, 2]
    d, e, f = m[1, 1], m[1, 2], m[2, 2]
    c00 = d * f - e * e
    c01 = c * e - b * f
    c02 = b * e - c * d
    det = a * c00 + b * c01 + c * c02
    inv = np.empty((3, 3))
    inv[0, 0] = c00 / det
    inv[0, 1] = inv[1, 0] = c01 / det
    inv[0, 2] = inv[2, 0] = c02 / det
    inv[1, 1] = (a * f - c * c) / det
    inv[1, 2] = inv[2, 1] = (b * c - a * e) / det
    inv[2, 2] = (a * d - b * b) / det
    return inv, det


@numba.njit(cache=True, inline="always")
def spot_covariance(gx, gy, gz, dx, dy, dz, lam, pixel_mm, distance_mm, sigma_lattice, sig_mos2, sig_bw2, sig_div2,
                    out):
    """Covariance in q (Å⁻²) of one reflection's spot in the fast model, written into ``out`` (3×3).

    The sum of the lattice transform, mosaic, bandpass, divergence and pixel terms listed in the module
    docstring.

    Parameters
    ----------
    gx, gy, gz : float, Å⁻¹
        The reciprocal lattice point G (lab frame).
    dx, dy, dz : float
        Unit vector of the diffracted ray towards the spot.
    lam : float, Å
    pixel_mm, distance_mm : float, mm
    sigma_lattice : (3, 3) float, Å⁻²
        :func:`lattice_covariance`.
    sig_mos2, sig_bw2, sig_div2 : float
        Variances of the mosaic rotation (rad²), of Δλ/λ, and of the beam direction (rad²): :func:`spreads`.
    out : (3, 3) float64
    """
    g = (gx, gy, gz)
    d = (dx, dy, dz)
    g2 = gx * gx + gy * gy + gz * gz
    rr = distance_mm / dx
    pvar = pixel_mm * pixel_mm / (12.0 * rr * rr * lam * lam)
    uf = (-d[2] * d[0], -d[2] * d[1], 1.0 - d[2] * d[2])  # f̂ − d(d·f̂), f̂ = +z
    us = (d[1] * d[0], -1.0 + d[1] * d[1], d[1] * d[2])  # ŝ − d(d·ŝ), ŝ = −y
    for a in range(3):
        for b in range(3):
            eye = 1.0 if a == b else 0.0
            out[a, b] = (sigma_lattice[a, b] + sig_mos2 * (g2 * eye - g[a] * g[b]) + sig_bw2 * g[a] * g[b]
                         + pvar * (uf[a] * uf[b] + us[a] * us[b]))
            if a > 0 and b > 0:  # divergence tilts the beam across x̂
                out[a, b] += sig_div2 / (lam * lam) * eye


class Spreads(NamedTuple):
    """The per-crystal and per-beam inputs of :func:`spot_covariance`."""

    lattice: np.ndarray  # (3, 3), Å⁻²
    mosaic2: float  # rad²
    bandpass2: float  # (Δλ/λ)²
    divergence2: float  # rad²


def spreads(crystal: Crystal, beam: Beam) -> Spreads:
    """Variances that smear spots in the fast model: lattice covariance, mosaic (the Monte Carlo model's rms
    rotation component), bandpass (uniform band: full width/√12) and divergence (uniform disc: diameter/4)."""
    return Spreads(lattice_covariance(crystal), mosaic_angle_rms_rad(crystal.mosaic_spread_deg) ** 2,
                   (beam.bandpass / math.sqrt(12.0)) ** 2, (beam.divergence_mrad * 1e-3 / 4.0) ** 2)


@numba.njit(cache=True)
def _walk_shell(lam, recip, q_max, hkl_max, delta, out):
    """Miller indices of every G ≠ 0 with |G| ≤ q_max within ``delta`` (Å⁻¹) of the Ewald sphere.

    Walks rows of constant (h, k) and solves |G + x̂/λ|² = (1/λ ± δ)² for l, so only the shell is visited.
    Writes up to ``len(out)`` rows into ``out`` and returns how many there are in all (call again with a
    larger ``out`` when that is more).
    """
    n = 0
    inv_lam = 1.0 / lam
    r_in2 = max(inv_lam - delta, 0.0) ** 2
    r_out2 = (inv_lam + delta) ** 2
    cs = recip[2]
    cc = cs[0] * cs[0] + cs[1] * cs[1] + cs[2] * cs[2]
    for h in range(-hkl_max[0], hkl_max[0] + 1):
        for k in range(-hkl_max[1], hkl_max[1] + 1):
            # u = h a* + k b* + x̂/λ: the row's offset from the sphere's centre.
            ux = h * recip[0, 0] + k * recip[1, 0] + inv_lam
            uy = h * recip[0, 1] + k * recip[1, 1]
            uz = h * recip[0, 2] + k * recip[1, 2]
            bq = ux * cs[0] + uy * cs[1] + uz * cs[2]
            uu = ux * ux + uy * uy + uz * uz
            disc_out = bq * bq - cc * (uu - r_out2)
            if disc_out < 0.0:
                continue
            root = math.sqrt(disc_out)
            l_lo = int(math.ceil((-bq - root) / cc))
            l_hi = int(math.floor((-bq + root) / cc))
            disc_in = bq * bq - cc * (uu - r_in2)
            skip_lo, skip_hi = 1, 0
            if disc_in > 0.0:
                root_in = math.sqrt(disc_in)
                skip_lo = int(math.floor((-bq - root_in) / cc)) + 1
                skip_hi = int(math.ceil((-bq + root_in) / cc)) - 1
            for l in range(l_lo, l_hi + 1):
                if skip_lo <= l <= skip_hi or (h == 0 and k == 0 and l == 0):
                    continue
                gx = h * recip[0, 0] + k * recip[1, 0] + l * recip[2, 0]
                gy = h * recip[0, 1] + k * recip[1, 1] + l * recip[2, 1]
                gz = h * recip[0, 2] + k * recip[1, 2] + l * recip[2, 2]
                if gx * gx + gy * gy + gz * gz > q_max * q_max:
                    continue
                if n < out.shape[0]:
                    out[n, 0], out[n, 1], out[n, 2] = h, k, l
                n += 1
    return n


@numba.njit(cache=True)
def _spot_rows(hkl, recip, lam, s_beam, f_beam, pixel_mm, distance_mm, sigma_lattice, sig_mos2, sig_bw2, sig_div2,
               kahn, max_excitation, sf_mode, default_F, grid, seed, wilson_mean):
    """Per-reflection spot geometry for :func:`reflections_near_sphere` (one row per hkl; ``keep`` marks the
    reflections within their excitation limit that scatter forwards)."""
    n = hkl.shape[0]
    inv_lam = 1.0 / lam
    keep = np.zeros(n, dtype=np.bool_)
    g = np.empty((n, 3))
    d = np.empty((n, 3))
    cov = np.empty((n, 3, 3))
    cols = np.empty((n, 6))  # eps, radial sigma, slow, fast, |F|, P
    for m in range(n):
        h, k, l = hkl[m, 0], hkl[m, 1], hkl[m, 2]
        for a in range(3):
            g[m, a] = h * recip[0, a] + k * recip[1, a] + l * recip[2, a]
        px_, py_, pz_ = g[m, 0] + inv_lam, g[m, 1], g[m, 2]
        pn = math.sqrt(px_ * px_ + py_ * py_ + pz_ * pz_)
        dx, dy, dz = px_ / pn, py_ / pn, pz_ / pn
        d[m, 0], d[m, 1], d[m, 2] = dx, dy, dz
        if dx < 0.05:  # backwards or grazing the detector plane
            continue
        eps = pn - inv_lam
        spot_covariance(g[m, 0], g[m, 1], g[m, 2], dx, dy, dz, lam, pixel_mm, distance_mm, sigma_lattice, sig_mos2,
                        sig_bw2, sig_div2, cov[m])
        var_n = 0.0
        for a in range(3):
            for b in range(3):
                var_n += d[m, a] * cov[m, a, b] * d[m, b]
        sigma_n = math.sqrt(var_n)
        limit = CUTOFF_SIGMA * sigma_n if max_excitation != max_excitation else max_excitation
        if abs(eps) > limit:
            continue
        keep[m] = True
        t = distance_mm / dx
        g2 = g[m, 0] * g[m, 0] + g[m, 1] * g[m, 1] + g[m, 2] * g[m, 2]
        cols[m, 0] = eps
        cols[m, 1] = sigma_n
        cols[m, 2] = s_beam - t * dy / pixel_mm
        cols[m, 3] = f_beam + t * dz / pixel_mm
        cols[m, 4] = structure_amplitude(h, k, l, 0.5 * math.sqrt(g2), sf_mode, default_F, grid, seed, wilson_mean)
        cols[m, 5] = polarization(dx, dy, dz, kahn)
    return keep, g, d, cov, cols


@numba.njit(cache=True)
def _draw_spots(ns, nf, s_beam, f_beam, pixel_mm, distance_mm, lam, g, d, cov, slow, fast, amplitude, weight):
    """Sum each reflection's Gaussian (integrated weight |F|²·weight) over the pixels of its window."""
    out = np.zeros((ns, nf))
    inv_lam = 1.0 / lam
    cut2 = CUTOFF_SIGMA * CUTOFF_SIGMA
    for m in range(g.shape[0]):
        prec, det = _inv3(cov[m])
        rr = distance_mm / d[m, 0]
        extent = CUTOFF_SIGMA * math.sqrt(cov[m, 0, 0] + cov[m, 1, 1] + cov[m, 2, 2]) * rr * lam / (d[m, 0] * pixel_mm)
        w = min(int(extent) + 1, MAX_HALF_WINDOW)
        i0 = max(int(math.floor(slow[m])) - w, 0)
        i1 = min(int(math.ceil(slow[m])) + w, ns - 1)
        j0 = max(int(math.floor(fast[m])) - w, 0)
        j1 = min(int(math.ceil(fast[m])) + w, nf - 1)
        norm = amplitude[m] * amplitude[m] * weight / ((2.0 * math.pi) ** 1.5 * math.sqrt(det))
        if i0 > i1 or j0 > j1 or norm == 0.0:
            continue
        gx, gy, gz = g[m, 0], g[m, 1], g[m, 2]
        for i in range(i0, i1 + 1):
            py = -(i - s_beam) * pixel_mm
            for j in range(j0, j1 + 1):
                pz = (j - f_beam) * pixel_mm
                rp = math.sqrt(distance_mm * distance_mm + py * py + pz * pz)
                qx = (distance_mm / rp - 1.0) * inv_lam - gx
                qy = py / rp * inv_lam - gy
                qz = pz / rp * inv_lam - gz
                m2 = (prec[0, 0] * qx * qx + prec[1, 1] * qy * qy + prec[2, 2] * qz * qz
                      + 2.0 * (prec[0, 1] * qx * qy + prec[0, 2] * qx * qz + prec[1, 2] * qy * qz))
                if m2 < cut2:
                    out[i, j] += norm * math.exp(-0.5 * m2)
    return out


def reflections_near_sphere(crystal: Crystal, beam: Beam, detector: Detector, *,
                            max_excitation: float | None = None, margin_px: float = 0.0) -> dict:
    """Every reflection close enough to the Ewald sphere to be seen, with its spot's geometry.

    The one enumeration behind :func:`bragg_fast` and :func:`predict_spots`: reciprocal lattice points G ≠ 0
    within the detector's reach whose excitation error ε = |G + x̂/λ| − 1/λ is within ``max_excitation`` (by
    default :data:`CUTOFF_SIGMA` times the spot's own spread across the sphere), scattering forwards, with
    their spot centre on the detector or within ``margin_px`` of it.

    Returns
    -------
    dict
        ``hkl`` (n, 3) int64; ``g`` (n, 3) Å⁻¹; ``d`` (n, 3) unit diffracted directions; ``cov`` (n, 3, 3) Å⁻²
        (:func:`spot_covariance`); ``excitation_error``, ``radial_sigma`` (n,) Å⁻¹; ``slow``, ``fast`` (n,)
        pixel-centre coordinates of the spot; ``amplitude`` (n,) |F| in electrons; ``polarization`` (n,) P at
        the spot.
    """
    recip = crystal.reciprocal_vectors()
    q_max = max_q(detector, beam)
    hkl_max = np.floor(q_max * np.linalg.norm(crystal.real_vectors(), axis=1)).astype(np.int64) + 1
    spread = spreads(crystal, beam)
    lam = beam.wavelength_A
    if max_excitation is None:
        # A bound on any reflection's radial spread: the shell the walk must cover.
        pix_var = 2.0 * detector.pixel_mm**2 / (12.0 * detector.distance_mm**2 * lam**2)
        bound = math.sqrt(np.trace(spread.lattice) + (spread.mosaic2 + spread.bandpass2) * q_max**2
                          + 2.0 * spread.divergence2 / lam**2 + pix_var)
        delta = CUTOFF_SIGMA * bound
    else:
        delta = float(max_excitation)
    hkl = np.empty((4096, 3), dtype=np.int64)
    n = _walk_shell(lam, recip, q_max, hkl_max, delta, hkl)
    if n > len(hkl):
        hkl = np.empty((n, 3), dtype=np.int64)
        _walk_shell(lam, recip, q_max, hkl_max, delta, hkl)
    hkl = hkl[:n]
    amp = amplitude_source(crystal, 0.5 * q_max + 0.01)
    s_beam, f_beam = detector.beam_center
    keep, g, d, cov, cols = _spot_rows(hkl, recip, lam, s_beam, f_beam, detector.pixel_mm, detector.distance_mm,
                                       *spread, beam.polarization_factor_K,
                                       math.nan if max_excitation is None else float(max_excitation), *amp)
    slow, fast = cols[:, 2], cols[:, 3]
    keep &= ((slow >= -0.5 - margin_px) & (slow <= detector.n_slow - 0.5 + margin_px)
             & (fast >= -0.5 - margin_px) & (fast <= detector.n_fast - 0.5 + margin_px))
    return {"hkl": hkl[keep], "g": g[keep], "d": d[keep], "cov": cov[keep], "excitation_error": cols[keep, 0],
            "radial_sigma": cols[keep, 1], "slow": slow[keep], "fast": fast[keep], "amplitude": cols[keep, 4],
            "polarization": cols[keep, 5]}


def lattice_covariance(crystal: Crystal) -> np.ndarray:
    """Covariance in q (Å⁻²) of nanoBragg's ``gauss`` spot for this crystal's block size and orientation.

    F_latt² = (NaNbNc)²·exp(−2r²/0.63) with r² = Σᵢ (Nᵢ aᵢ·Δq)², i.e. precision (4/0.63)·Σᵢ Nᵢ² aᵢaᵢᵀ.
    """
    abc = crystal.real_vectors()
    n = np.asarray(crystal.cells_abc, dtype=float)
    prec = (4.0 / 0.63) * np.einsum("i,ij,ik->jk", n * n, abc, abc)
    return np.linalg.inv(prec)


def max_q(detector: Detector, beam: Beam) -> float:
    """Largest |q| = 2 sinθ/λ (Å⁻¹) any pixel of the detector sees, over the whole bandpass."""
    ns, nf = detector.shape
    s0, f0 = detector.beam_center
    corners = np.array([[-0.5, -0.5], [-0.5, nf - 0.5], [ns - 0.5, -0.5], [ns - 0.5, nf - 0.5]])
    r = np.hypot(corners[:, 0] - s0, corners[:, 1] - f0).max() * detector.pixel_mm
    two_theta = math.atan2(r, detector.distance_mm)
    lam_min = beam.wavelength_A * (1.0 - beam.bandpass / 2.0)
    return 2.0 * math.sin(two_theta / 2.0) / lam_min


def bragg_fast(crystal: Crystal, beam: Beam, detector: Detector, *, pixel_factors: np.ndarray | None = None):
    """Expected Bragg photons per pixel from the fast analytic model (see the module docstring).

    Parameters
    ----------
    crystal, beam, detector
    pixel_factors : (n_slow, n_fast) float, optional
        P·Ω from :func:`geometry.pixel_factor`, when the caller already has it.

    Returns
    -------
    (n_slow, n_fast) float32, photons
    """
    spots = reflections_near_sphere(crystal, beam, detector, margin_px=MAX_HALF_WINDOW)
    weight = float(np.prod(crystal.cells_abc)) / crystal.volume_A3
    s_beam, f_beam = detector.beam_center
    img = _draw_spots(detector.n_slow, detector.n_fast, s_beam, f_beam, detector.pixel_mm, detector.distance_mm,
                      beam.wavelength_A, spots["g"], spots["d"], spots["cov"], spots["slow"], spots["fast"],
                      spots["amplitude"], weight)
    if pixel_factors is None:
        pixel_factors = pixel_factor(detector, beam)
    return (img * pixel_factors * (R_E_SQ_M2 * beam.fluence * crystal.n_blocks)).astype(np.float32)


def predict_spots(crystal: Crystal, beam: Beam, detector: Detector, *, max_excitation: float | None = None) -> dict:
    """Reflections near the Ewald sphere and where their spots land on the detector.

    A reciprocal lattice point G = h a* + k b* + l c* diffracts when it lies on the Ewald sphere, the sphere of
    radius 1/λ centred at −x̂/λ (Bragg's law in vector form). Its excitation error is the distance to that
    sphere, ε = |G + x̂/λ| − 1/λ, and its spot lies where the ray from the sample along G + x̂/λ, the point of
    the sphere nearest G, meets the detector plane.

    Every reflection with |G| up to :func:`max_q` is examined (the beam's central wavelength and direction).
    ``000`` is left out (it is the direct beam), as are reflections scattered backwards and spots that fall
    off the detector.

    Parameters
    ----------
    crystal, beam, detector
    max_excitation : float, Å⁻¹, optional
        Largest |ε| kept. By default each reflection keeps its own limit, :data:`CUTOFF_SIGMA` times its
        radial spread (the ``radial_sigma`` returned): the reflections :func:`bragg_fast` draws.

    Returns
    -------
    dict of (n,) arrays
        ``h``, ``k``, ``l`` (int64); ``excitation_error`` (float64, Å⁻¹, positive outside the sphere);
        ``radial_sigma`` (float64, Å⁻¹): the standard deviation, along the diffracted direction, of the
        fast model's spot covariance (lattice transform, mosaic spread, bandpass and divergence; the pixel
        footprint is tangential and adds nothing), so that |ε| ≲ ``radial_sigma`` means "in diffraction";
        ``slow``, ``fast`` (float64, pixel-centre coordinates of the spot); ``d_spacing`` (float64, Å,
        1/|G|). Sorted by d-spacing, largest first.

    Examples
    --------
    >>> from diffranb.sim.crystal import Crystal
    >>> from diffranb.sim.geometry import Beam, Detector
    >>> spots = predict_spots(Crystal(misset_deg=(10, 20, 30)), Beam(), Detector())
    >>> sorted(spots)
    ['amplitude', 'd_spacing', 'excitation_error', 'fast', 'h', 'k', 'l', 'polarization', 'radial_sigma', 'slow']
    """
    spots = reflections_near_sphere(crystal, beam, detector, max_excitation=max_excitation)
    hkl = spots["hkl"]
    d_spacing = 1.0 / np.linalg.norm(spots["g"], axis=1)
    order = np.argsort(-d_spacing, kind="stable")
    return {"h": hkl[order, 0], "k": hkl[order, 1], "l": hkl[order, 2],
            "excitation_error": spots["excitation_error"][order], "radial_sigma": spots["radial_sigma"][order],
            "slow": spots["slow"][order], "fast": spots["fast"][order], "d_spacing": d_spacing[order],
            "amplitude": spots["amplitude"][order], "polarization": spots["polarization"][order]}
