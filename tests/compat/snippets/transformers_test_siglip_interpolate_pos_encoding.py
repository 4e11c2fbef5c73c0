# Source: huggingface/transformers, tests/models/siglip/test_modeling_siglip.py,
#   SiglipModelIntegrationTest.test_inference_interpolate_pos_encoding (do_resize=False, interpolate_pos_encoding)
# Edits: the test method written out as a script; the test's local COCO fixture image is fetched from the COCO URL
#   its prepare_img() uses.
# Differs-on-purpose: siglip's SiglipProcessor pads text to the model's length by default (the checkpoints pool
#   the last position; README "Port from transformers"), transformers' does not pad: the text side differs;
#   values: inputs['attention_mask'], inputs['input_ids'], outputs['logits_per_image'],
#   outputs['logits_per_text'], outputs['text_embeds'], outputs['text_model_output']['last_hidden_state'],
#   outputs['text_model_output']['pooler_output']
import requests
import torch
from PIL import Image

from transformers import SiglipModel, SiglipProcessor

model_name = "google/siglip-base-patch16-224"
model = SiglipModel.from_pretrained(model_name)

image = Image.open(requests.get("http://images.cocodataset.org/val2017/000000039769.jpg", stream=True).raw)
processor = SiglipProcessor.from_pretrained(model_name, do_resize=False, size={"height": 480, "width": 640})

inputs = processor(text="what's in the image", images=image, return_tensors="pt")

with torch.no_grad():
    outputs = model(**inputs, interpolate_pos_encoding=True)

vision_shape = outputs.vision_model_output.last_hidden_state.shape
