"""`python -m siglip` (and `torchrun -m siglip train ...`)."""

from .cli import main

raise SystemExit(main())
