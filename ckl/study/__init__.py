"""`ckl study`: the literature's findings on forgetting, reproduced on any stream and base
model (ckl.study.base explains the parts; one module per study)."""
