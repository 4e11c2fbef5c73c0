# Source: huggingface/transformers, tests/models/siglip/test_modeling_siglip.py,
#   SiglipModelIntegrationTest.test_inference (SiglipProcessor, logits both ways, probabilities)
# Edits: the test method written out as a script (assertions dropped; their inputs kept as variables).
import requests
import torch
from PIL import Image

from transformers import SiglipModel, SiglipProcessor

model_name = "google/siglip-base-patch16-224"
model = SiglipModel.from_pretrained(model_name)
processor = SiglipProcessor.from_pretrained(model_name)

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)
inputs = processor(
    text=["a photo of 2 cats", "a photo of 2 dogs"], images=image, padding="max_length", return_tensors="pt"
)

with torch.no_grad():
    outputs = model(**inputs)
    logits_per_image = outputs.logits_per_image
    logits_per_text = outputs.logits_per_text

expected_shape = torch.Size((inputs.pixel_values.shape[0], inputs.input_ids.shape[0]))
probs = torch.sigmoid(logits_per_image)
