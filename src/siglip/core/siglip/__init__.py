"""The SigLIP family (`model_type` "siglip", also SigLIP 2 fixed-resolution checkpoints): configs, the square
patch embeddings and the public models, the fixed-size image processor and the processor. Built on
`siglip.core.two_tower` only (the tokenizers, shared with SigLIP 2, live there too)."""
