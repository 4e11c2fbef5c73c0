"""transformers' module paths, for code that imports from them (`from transformers.models.siglip import ...`
becomes `from siglip.models.siglip import ...`): each module re-exports the classes of its transformers namesake
that siglip has. This folder also holds the bundled checkpoints (`siglip-tiny-fashion/`)."""
