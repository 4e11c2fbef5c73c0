"""Embeddings: the Embedder, how a model is loaded and run (options, precision, int8, compile,
ONNX), the files `siglip embed` writes and reads back, and the Ray engine."""
