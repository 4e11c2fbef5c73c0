# Source: model card of google/siglip2-base-patch16-naflex (https://huggingface.co/google/siglip2-base-patch16-naflex), zero-shot pipeline
# Edits: re-typed; same calls, arguments, id and URL.
from transformers import pipeline

# the pipeline
ckpt = "google/siglip2-base-patch16-naflex"
image_classifier = pipeline(model=ckpt, task="zero-shot-image-classification")

# an image (by URL) and candidate labels
url = "http://images.cocodataset.org/val2017/000000039769.jpg"
candidate_labels = ["2 cats", "a plane", "a remote"]

# inference
outputs = image_classifier(url, candidate_labels)
print(outputs)
