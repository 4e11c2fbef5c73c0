"""The SigLIP 2 family (`model_type` "siglip2": the NaFlex checkpoints, native aspect ratio with a variable number
of patches): configs, the NaFlex patch embeddings and the public models, the NaFlex image processor and the
processor. Built on `siglip.core.two_tower` only (SigLIP 2's Gemma tokenizers live there, as the
fixed-resolution checkpoints, `model_type` "siglip", use them too)."""
