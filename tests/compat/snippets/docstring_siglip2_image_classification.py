# Source: huggingface/transformers v5.24.0, src/transformers/models/siglip2/modeling_siglip2.py,
#   Siglip2ForImageClassification.forward docstring example (a randomly initialised head, seeded)
# Edits: re-typed as a script (doctest prompts dropped); same calls, arguments, seed, id and URL.
# Oracle-fails: the docstring loads a SigLIP 2 NaFlex class from a fixed-resolution checkpoint
#   (model_type "siglip"); transformers refuses the mismatched patch-embedding weights
from io import BytesIO

import torch
from huggingface_hub.utils import httpx
from PIL import Image

from transformers import AutoImageProcessor, Siglip2ForImageClassification

torch.manual_seed(3)
url = "http://images.cocodataset.org/val2017/000000039769.jpg"
with httpx.stream("GET", url) as response:
    image = Image.open(BytesIO(response.read()))

# a Siglip2Model checkpoint: the classification head is initialised at random (hence the seed above)
image_processor = AutoImageProcessor.from_pretrained("google/siglip2-base-patch16-224")
model = Siglip2ForImageClassification.from_pretrained("google/siglip2-base-patch16-224")

inputs = image_processor(images=image, return_tensors="pt")
outputs = model(**inputs)
logits = outputs.logits
# one of the two classes
predicted_class_idx = logits.argmax(-1).item()
predicted_label = model.config.id2label[predicted_class_idx]
print("Predicted class:", predicted_label)
