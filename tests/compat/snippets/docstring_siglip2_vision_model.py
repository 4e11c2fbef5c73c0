# Source: huggingface/transformers v5.24.0, src/transformers/models/siglip2/modeling_siglip2.py,
#   Siglip2VisionModel.forward docstring example
# Edits: re-typed as a script (doctest prompts dropped); same calls, arguments, id and URL.
# Oracle-fails: the docstring loads a SigLIP 2 NaFlex class from a fixed-resolution checkpoint
#   (model_type "siglip"); transformers refuses the mismatched patch-embedding weights
from io import BytesIO

from huggingface_hub.utils import httpx
from PIL import Image

from transformers import AutoProcessor, Siglip2VisionModel

model = Siglip2VisionModel.from_pretrained("google/siglip2-base-patch16-224")
processor = AutoProcessor.from_pretrained("google/siglip2-base-patch16-224")

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
with httpx.stream("GET", url) as response:
    image = Image.open(BytesIO(response.read()))

inputs = processor(images=image, return_tensors="pt")

outputs = model(**inputs)
last_hidden_state = outputs.last_hidden_state
pooled_output = outputs.pooler_output  # pooled features
