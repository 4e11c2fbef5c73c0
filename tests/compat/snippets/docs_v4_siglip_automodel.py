# Source: transformers 4.x docs page "SigLIP", usage example using the model yourself
#   (https://huggingface.co/docs/transformers/v4.49.0/model_doc/siglip)
# Edits: re-typed; same calls, arguments, id and URL.
import requests
import torch
from PIL import Image

from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("google/siglip-base-patch16-224")
processor = AutoProcessor.from_pretrained("google/siglip-base-patch16-224")

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)

candidate_labels = ["2 cats", "2 dogs"]
# the pipeline's prompt template, to get the same results
texts = [f"This is a photo of {label}." for label in candidate_labels]
# padding="max_length": the model was trained with it
inputs = processor(text=texts, images=image, padding="max_length", return_tensors="pt")

with torch.no_grad():
    outputs = model(**inputs)

logits_per_image = outputs.logits_per_image
probs = torch.sigmoid(logits_per_image)  # the probabilities
print(f"{probs[0][0]:.1%} that image 0 is '{candidate_labels[0]}'")
