"""Loading and saving models, the log-prob primitives training and evaluation share, where a model's blocks and MLPs are."""
