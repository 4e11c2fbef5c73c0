# Source: model card of google/siglip-base-patch16-256-multilingual (https://huggingface.co/google/siglip-base-patch16-256-multilingual), "How to use"
# Edits: re-typed; same calls, arguments, id and URL.
import requests
import torch
from PIL import Image

from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("google/siglip-base-patch16-256-multilingual")
processor = AutoProcessor.from_pretrained("google/siglip-base-patch16-256-multilingual")

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)

texts = ["a photo of 2 cats", "a photo of 2 dogs"]
inputs = processor(text=texts, images=image, padding="max_length", return_tensors="pt")

with torch.no_grad():
    outputs = model(**inputs)

logits_per_image = outputs.logits_per_image
probs = torch.sigmoid(logits_per_image)  # probabilities
print(f"{probs[0][0]:.1%} that image 0 is '{texts[0]}'")
