# Source: huggingface/transformers docs/source/en/model_doc/siglip.md (transformers 5.x docs page "SigLIP", usage example, Pipeline tab)
# Edits: re-typed; same calls, arguments, id and URL; the result is kept in a variable.
# Requires: cuda
from transformers import pipeline

image = (
    "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/pipeline-cat-chonk.jpeg"
)
candidate_labels = ["a Pallas cat", "a lion", "a Siberian tiger"]

pipeline = pipeline(task="zero-shot-image-classification", model="google/siglip-base-patch16-224", device=0)
result = pipeline(image, candidate_labels=candidate_labels)
