# Source: huggingface/transformers v5.24.0, src/transformers/models/siglip/modeling_siglip.py,
#   SiglipModel.get_image_features docstring example
# Edits: re-typed as a script (doctest prompts dropped); same calls, arguments, id and URL.
import torch

from transformers import AutoModel, AutoProcessor
from transformers.image_utils import load_image

model = AutoModel.from_pretrained("google/siglip-base-patch16-224")
processor = AutoProcessor.from_pretrained("google/siglip-base-patch16-224")

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = load_image(url)

inputs = processor(images=image, return_tensors="pt")

with torch.no_grad():
    image_features = model.get_image_features(**inputs)
