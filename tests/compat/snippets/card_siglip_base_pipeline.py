# Source: model card of google/siglip-base-patch16-224 (https://huggingface.co/google/siglip-base-patch16-224),
#   "How to use" pipeline example; the same code is in GitHub repo Dee-Why/Language-Image-Pretraining,
#   exp/SigLIP_image_encode.py (with five candidate labels, as here)
# Edits: re-typed; same calls, arguments, id and URL.
import requests
from PIL import Image

from transformers import pipeline

# the zero-shot pipeline
image_classifier = pipeline(task="zero-shot-image-classification", model="google/siglip-base-patch16-224")

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)

candidate_labels = ["2 cats", "a plane", "a remote", "a cat", "3 cats"]
outputs = image_classifier(image, candidate_labels=candidate_labels)
outputs = [{"score": round(output["score"], 4), "label": output["label"]} for output in outputs]
print(outputs)
