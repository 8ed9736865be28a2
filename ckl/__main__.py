"""`python -m ckl` (and `accelerate launch -m ckl ...`) runs the CLI."""

from ckl.app.cli import main

main()
