"""Physical constants used by the simulator, in the units the simulator works in.

References
----------
CODATA 2018 recommended values, https://physics.nist.gov/cuu/Constants/
"""

#: Classical electron radius squared, m² (CODATA 2018: r_e = 2.8179403262e-15 m).
R_E_SQ_M2 = 7.94079248018965e-30

#: Avogadro constant, 1/mol.
N_AVOGADRO = 6.02214076e23

#: Default fluence, photons/m²: the value for which r_e²·Φ = 1, nanoBragg's default.
DEFAULT_FLUENCE_PH_PER_M2 = 1.0 / R_E_SQ_M2

#: Lab-frame unit vectors (nanoBragg's MOSFLM convention): beam along +x, detector fast axis +z,
#: slow axis −y, polarisation E-vector along +z.
BEAM_DIR = (1.0, 0.0, 0.0)
FAST_AXIS = (0.0, 0.0, 1.0)
SLOW_AXIS = (0.0, -1.0, 0.0)
E_VECTOR = (0.0, 0.0, 1.0)
