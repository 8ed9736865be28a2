"""Running experiments: the config, the experiment loop, checkpoints, run directories, the unlearning steps and the relearning attack."""
