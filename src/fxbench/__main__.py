"""`python -m fxbench` (used by torchrun for multi-GPU training)."""

from fxbench.cli.app import main

main()
