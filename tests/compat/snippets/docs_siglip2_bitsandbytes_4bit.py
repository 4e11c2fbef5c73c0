# Source: huggingface/transformers docs/source/en/model_doc/siglip2.md (transformers 5.x docs page "SigLIP2", quantization example with bitsandbytes int4;
#   the model is siglip2-large-patch16-512 and the processor siglip2-base-patch16-224, as on the page)
# Edits: re-typed; same calls, arguments, ids and URL.
# Requires: cuda, bitsandbytes
import requests
import torch
from PIL import Image

from transformers import AutoModel, AutoProcessor, BitsAndBytesConfig

bnb_config = BitsAndBytesConfig(load_in_4bit=True)
model = AutoModel.from_pretrained(
    "google/siglip2-large-patch16-512",
    quantization_config=bnb_config,
    device_map="auto",
    attn_implementation="sdpa",
)
processor = AutoProcessor.from_pretrained("google/siglip2-base-patch16-224")

url = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/pipeline-cat-chonk.jpeg"
image = Image.open(requests.get(url, stream=True).raw)
candidate_labels = ["a Pallas cat", "a lion", "a Siberian tiger"]
texts = [f"This is a photo of {label}." for label in candidate_labels]
inputs = processor(text=texts, images=image, padding="max_length", max_length=64, return_tensors="pt").to(
    "cuda"
)

with torch.no_grad():
    outputs = model(**inputs)

logits_per_image = outputs.logits_per_image
probs = torch.sigmoid(logits_per_image)
print(f"{probs[0][0]:.1%} that image 0 is '{candidate_labels[0]}'")
