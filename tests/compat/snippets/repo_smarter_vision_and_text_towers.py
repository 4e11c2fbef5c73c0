# Source: GitHub repo smarter-vlm/smarter, test_siglip.py (the vision tower with AutoProcessor, then the text tower
#   with AutoTokenizer, on google/siglip-base-patch16-224)
# Edits: re-typed; same calls, arguments, id and URL; the two towers' outputs get distinct names.
import requests
from PIL import Image

from transformers import AutoProcessor, AutoTokenizer, SiglipTextModel, SiglipVisionModel

model = SiglipVisionModel.from_pretrained("google/siglip-base-patch16-224")
processor = AutoProcessor.from_pretrained("google/siglip-base-patch16-224")

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)

inputs = processor(images=image, return_tensors="pt")
outputs = model(**inputs)
image_last_hidden_state = outputs.last_hidden_state
image_pooled_output = outputs.pooler_output
print("frozen vision output", image_pooled_output)

model = SiglipTextModel.from_pretrained("google/siglip-base-patch16-224")
tokenizer = AutoTokenizer.from_pretrained("google/siglip-base-patch16-224")

text_inputs = tokenizer(["a photo of a cat", "a photo of a dog"], padding="max_length", return_tensors="pt")
text_outputs = model(**text_inputs)
text_last_hidden_state = text_outputs.last_hidden_state
text_pooled_output = text_outputs.pooler_output
print("text pooled shape", text_pooled_output.shape)
