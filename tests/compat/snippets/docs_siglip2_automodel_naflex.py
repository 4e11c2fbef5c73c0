# Source: huggingface/transformers docs/source/en/model_doc/siglip2.md (transformers 5.x docs page "SigLIP2", AutoModel (NaFlex) tab)
# Edits: re-typed; same calls, arguments (dtype=torch.float16, device_map="auto", max_num_patches=256,
#   .to("cuda")), id and URL.
# Requires: cuda
import requests
import torch
from PIL import Image

from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained(
    "google/siglip2-base-patch16-naflex", dtype=torch.float16, device_map="auto", attn_implementation="sdpa"
)
processor = AutoProcessor.from_pretrained("google/siglip2-base-patch16-naflex")

url = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/pipeline-cat-chonk.jpeg"
image = Image.open(requests.get(url, stream=True).raw)
candidate_labels = ["a Pallas cat", "a lion", "a Siberian tiger"]
texts = [f"This is a photo of {label}." for label in candidate_labels]

# max_num_patches defaults to 256; higher values give a higher resolution
inputs = processor(
    text=texts, images=image, padding="max_length", max_num_patches=256, return_tensors="pt"
).to("cuda")

with torch.no_grad():
    outputs = model(**inputs)

logits_per_image = outputs.logits_per_image
probs = torch.sigmoid(logits_per_image)
print(f"{probs[0][0]:.1%} that image 0 is '{candidate_labels[0]}'")
