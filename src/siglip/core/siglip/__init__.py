"""The SigLIP family (`model_type` "siglip", also SigLIP 2 fixed-resolution checkpoints): configs, the
network, the SentencePiece tokenizer, the fixed-size image processor and the processor that joins them."""
