"""Evaluation: probing a model on fact cohorts, and the metrics computed from the results."""
