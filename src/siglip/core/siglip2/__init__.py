"""The SigLIP 2 family (`model_type` "siglip2": the NaFlex checkpoints, native aspect ratio with a variable number
of patches): configs, the network, the NaFlex image processor and the processor; and SigLIP 2's Gemma tokenizers
(also used by the fixed-resolution checkpoints, `model_type` "siglip", which load into `SiglipModel`)."""
