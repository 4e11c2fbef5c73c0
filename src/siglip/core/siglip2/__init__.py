"""The SigLIP 2 family (`model_type` "siglip2": the NaFlex checkpoints, native aspect ratio with a variable number
of patches): configs, the network, the NaFlex image processor and the processor that joins it to a tokenizer."""
