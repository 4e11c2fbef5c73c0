# Source: GitHub repo DESU-CLUB/openmorph, models/multimodal_encoder/siglip_test.py (SiglipProcessor on images
#   only, for a vision tower)
# Edits: re-typed; the repository's own tower class is replaced by transformers' SiglipVisionModel on the same id.
import requests
import torch
from PIL import Image

from transformers import SiglipProcessor, SiglipVisionModel

model = SiglipVisionModel.from_pretrained("google/siglip-base-patch16-224")

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)
processor = SiglipProcessor.from_pretrained("google/siglip-base-patch16-224")

inputs = processor(images=image, return_tensors="pt")

with torch.no_grad():
    logits = model(**inputs).pooler_output
    print(logits.shape)
