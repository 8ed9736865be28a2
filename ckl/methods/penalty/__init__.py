"""Regularisation penalties towards earlier weights (L2, EWC, RecAdam, importance)."""
