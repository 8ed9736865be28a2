"""`python -m ckl` (and `accelerate launch -m ckl ...`) runs the CLI."""

from ckl.cli import main

main()
