# Source: huggingface/transformers v5.24.0, src/transformers/models/siglip/modeling_siglip.py,
#   SiglipVisionModel.forward docstring example
# Edits: re-typed as a script (doctest prompts dropped); same calls, arguments, id and URL.
from io import BytesIO

from huggingface_hub.utils import httpx
from PIL import Image

from transformers import AutoProcessor, SiglipVisionModel

model = SiglipVisionModel.from_pretrained("google/siglip-base-patch16-224")
processor = AutoProcessor.from_pretrained("google/siglip-base-patch16-224")

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
with httpx.stream("GET", url) as response:
    image = Image.open(BytesIO(response.read()))

inputs = processor(images=image, return_tensors="pt")

outputs = model(**inputs)
last_hidden_state = outputs.last_hidden_state
pooled_output = outputs.pooler_output  # pooled features
