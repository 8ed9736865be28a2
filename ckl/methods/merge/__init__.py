"""Post-stage parts that merge weights (interpolation, task arithmetic, LiNeS, EMA)."""
