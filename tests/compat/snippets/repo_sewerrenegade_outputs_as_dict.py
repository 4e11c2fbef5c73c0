# Source: GitHub repo sewerrenegade/MsC_Loss, sig_lip/sig_lip.py (indexes the output like a dict)
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
texts = [f"This is a photo of {label}." for label in candidate_labels]
inputs = processor(text=texts, images=image, padding="max_length", return_tensors="pt")

with torch.no_grad():
    outputs = model(**inputs)

vision_tokens_shape = outputs["vision_model_output"]["last_hidden_state"].shape
vision_pooled_shape = outputs["vision_model_output"]["pooler_output"].shape
print(vision_tokens_shape)
print(vision_pooled_shape)
logits_per_image = outputs.logits_per_image
probs = torch.sigmoid(logits_per_image)
print(f"{probs[0][0]:.1%} that image 0 is '{candidate_labels[0]}'")
