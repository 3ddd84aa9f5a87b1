"""`python -m vit_helpers.train` (also under torchrun): the command line, `vit_helpers.cli`.

A file of its own so that imports run one way: the command line imports the training loop, never the reverse.
"""
from vit_helpers.cli import main

raise SystemExit(main())
