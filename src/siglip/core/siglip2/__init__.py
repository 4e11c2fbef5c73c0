"""The SigLIP 2 family (`model_type` "siglip2", NaFlex) and SigLIP 2's Gemma tokenizers (also used by the
fixed-resolution checkpoints, `model_type` "siglip")."""
