# Source: huggingface/transformers v5.24.0, src/transformers/models/siglip/modeling_siglip.py,
#   SiglipForImageClassification.forward docstring example (a randomly initialised head, seeded)
# Edits: re-typed as a script (doctest prompts dropped); same calls, arguments, seed, id and URL.
from io import BytesIO

import torch
from huggingface_hub.utils import httpx
from PIL import Image

from transformers import AutoImageProcessor, SiglipForImageClassification

torch.manual_seed(3)
url = "http://images.cocodataset.org/val2017/000000039769.jpg"
with httpx.stream("GET", url) as response:
    image = Image.open(BytesIO(response.read()))

# a SiglipModel checkpoint: the classification head is initialised at random (hence the seed above)
image_processor = AutoImageProcessor.from_pretrained("google/siglip-base-patch16-224")
model = SiglipForImageClassification.from_pretrained("google/siglip-base-patch16-224")

inputs = image_processor(images=image, return_tensors="pt")
outputs = model(**inputs)
logits = outputs.logits
# one of the two classes
predicted_class_idx = logits.argmax(-1).item()
predicted_label = model.config.id2label[predicted_class_idx]
print("Predicted class:", predicted_label)
