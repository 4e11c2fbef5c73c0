# Source: huggingface/transformers docs/source/en/model_doc/siglip2.md (transformers 5.x docs page "SigLIP2", zero-shot example, Pipeline tab)
# Edits: re-typed; same calls, arguments (device=0, dtype=torch.bfloat16), id and URL; result kept in a variable.
# Requires: cuda
import torch

from transformers import pipeline

image = (
    "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/pipeline-cat-chonk.jpeg"
)
candidate_labels = ["a Pallas cat", "a lion", "a Siberian tiger"]

pipeline = pipeline(
    task="zero-shot-image-classification",
    model="google/siglip2-base-patch16-224",
    device=0,
    dtype=torch.bfloat16,
)
result = pipeline(image, candidate_labels=candidate_labels)
