# Source: transformers 4.x docs page "SigLIP", usage example with the pipeline API
#   (https://huggingface.co/docs/transformers/v4.49.0/model_doc/siglip, same text from v4.37 to v4.49)
# Edits: re-typed; same calls, arguments, id and URL.
import requests
from PIL import Image

from transformers import pipeline

# the pipeline
image_classifier = pipeline(task="zero-shot-image-classification", model="google/siglip-base-patch16-224")

# an image
url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)

# inference
candidate_labels = ["2 cats", "2 dogs"]
outputs = image_classifier(image, candidate_labels=candidate_labels)
outputs = [{"score": round(output["score"], 4), "label": output["label"]} for output in outputs]
print(outputs)
