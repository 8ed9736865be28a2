"""Gradient-projection methods (A-GEM, GEM)."""
