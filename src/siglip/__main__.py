"""`python -m siglip` (and `torchrun -m siglip train ...`)."""

from .tools.cli import main

raise SystemExit(main())
