# Source: huggingface/transformers v5.24.0, src/transformers/models/siglip/modeling_siglip.py,
#   SiglipModel.forward docstring example (google/siglip-base-patch16-224, the "31.9%" example)
# Edits: re-typed as a script (doctest prompts dropped); same calls, arguments, id and URL.
from io import BytesIO

import torch
from huggingface_hub.utils import httpx
from PIL import Image

from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("google/siglip-base-patch16-224")
processor = AutoProcessor.from_pretrained("google/siglip-base-patch16-224")

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
with httpx.stream("GET", url) as response:
    image = Image.open(BytesIO(response.read()))

texts = ["a photo of 2 cats", "a photo of 2 dogs"]
# the model was trained with padding="max_length"
inputs = processor(text=texts, images=image, padding="max_length", return_tensors="pt")

with torch.no_grad():
    outputs = model(**inputs)

logits_per_image = outputs.logits_per_image
probs = torch.sigmoid(logits_per_image)  # probabilities
print(f"{probs[0][0]:.1%} that image 0 is '{texts[0]}'")
