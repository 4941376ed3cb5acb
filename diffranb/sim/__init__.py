"""The diffraction simulator: nanoBragg's physics, written for speed."""
