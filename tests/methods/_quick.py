"""Options that make a registered method cheap in the suites that run every method
(tests/methods/test_method_contract.py, tests/model/test_architectures.py) without
changing what they check."""

# acu: its hooks and sums do not depend on the buffer's width; the default 2,048 costs
# ~9 s per apply on the CPU (measured in the architecture suite)
# adalora: counts its first epoch's steps to set PEFT's rank schedule, so it needs two epochs;
# medcare: one epoch of each of its phases (as mix_cpt)
QUICK = {"acu": {"acu": {"buffer": 256}}, "adalora": {"train": {"epochs": 2}}, "medcare": {"train": {"epochs": 2}}}
