"""What users call: the command line, the demo and `ckl update`."""
