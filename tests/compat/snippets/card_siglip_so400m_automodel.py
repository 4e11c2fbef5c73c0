# Source: model card of google/siglip-so400m-patch14-384 (https://huggingface.co/google/siglip-so400m-patch14-384),
#   "How to use"; the same code is in GitHub repo tombalestra/m3-spatial, lmm/siglip/debug1.py
# Edits: re-typed; same calls, arguments, id and URL.
import requests
import torch
from PIL import Image

from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("google/siglip-so400m-patch14-384")
processor = AutoProcessor.from_pretrained("google/siglip-so400m-patch14-384")

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)

candidate_labels = ["2 cats", "2 dogs"]
# the pipeline's prompt template, for the same results
texts = [f"This is a photo of {label}." for label in candidate_labels]
# padding="max_length": the model was trained with it
inputs = processor(text=texts, images=image, padding="max_length", return_tensors="pt")

with torch.no_grad():
    outputs = model(**inputs)

logits_per_image = outputs.logits_per_image
probs = torch.sigmoid(logits_per_image)
print(f"{probs[0][0]:.1%} that image 0 is '{candidate_labels[0]}'")
