"""Distillation parts (LwF, recovery)."""
