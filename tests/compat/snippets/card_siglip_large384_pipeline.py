# Source: model card of google/siglip-large-patch16-384 (https://huggingface.co/google/siglip-large-patch16-384),
#   "Alternatively, one can leverage the pipeline API"
# Edits: re-typed; same calls, arguments, id and URL.
import requests
from PIL import Image

from transformers import pipeline

image_classifier = pipeline(task="zero-shot-image-classification", model="google/siglip-large-patch16-384")

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)

outputs = image_classifier(image, candidate_labels=["2 cats", "a plane", "a remote"])
outputs = [{"score": round(output["score"], 4), "label": output["label"]} for output in outputs]
print(outputs)
