# Source: huggingface/transformers docs/source/en/model_doc/siglip.md (transformers 5.x docs page "SigLIP", usage example, AutoModel tab)
# Edits: re-typed; same calls, arguments (device_map="auto", attn_implementation="sdpa"), id and URL.
# Requires: accelerate  (transformers needs it for device_map=)
import requests
import torch
from PIL import Image

from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained(
    "google/siglip-base-patch16-224", device_map="auto", attn_implementation="sdpa"
)
processor = AutoProcessor.from_pretrained("google/siglip-base-patch16-224")

url = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/pipeline-cat-chonk.jpeg"
image = Image.open(requests.get(url, stream=True).raw)
candidate_labels = ["a Pallas cat", "a lion", "a Siberian tiger"]
texts = [f"This is a photo of {label}." for label in candidate_labels]
inputs = processor(text=texts, images=image, padding="max_length", return_tensors="pt").to(model.device)

with torch.no_grad():
    outputs = model(**inputs)

logits_per_image = outputs.logits_per_image
probs = torch.sigmoid(logits_per_image)
print(f"{probs[0][0]:.1%} that image 0 is '{candidate_labels[0]}'")
