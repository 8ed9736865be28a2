"""Foundations every layer may use: input errors, value checks, progress, the distributed wrapper."""
