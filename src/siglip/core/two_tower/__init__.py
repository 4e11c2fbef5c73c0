"""The shared machinery both model families build on, and nothing family-specific: the two-tower config
(`configuration`), the network up to the patch embeddings and the bases of the public models (`modeling`), the
image pipeline and its base class (`image_processing`), the tokenizers and their base (`tokenization`,
`sentencepiece`, `gemma`), and the processor base with the tokenizer picker (`processing`).

The families (`siglip.core.siglip`, `siglip.core.siglip2`) import from here and never from each other."""
