# Source: GitHub repo efogdev/Apollo, apollo/model/multimodal_encoder/siglip_encoder.py (SiglipVisionModel from
#   transformers.models.siglip.modeling_siglip; features are one hidden state, the grid side is image/patch)
# Edits: the class's steps written out as a script on google/siglip-so400m-patch14-384.
import requests
import torch
from PIL import Image

from transformers import SiglipImageProcessor, SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipVisionModel

model_name_or_path = "google/siglip-so400m-patch14-384"
vision_config = SiglipVisionConfig.from_pretrained(model_name_or_path)
vision_processor = SiglipImageProcessor.from_pretrained(model_name_or_path)
vision_tower = SiglipVisionModel.from_pretrained(model_name_or_path)
hidden_size = vision_config.hidden_size
grid = vision_config.image_size // vision_config.patch_size

select_layer = -2
url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)
pixel_values = vision_processor.preprocess(image, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    image_forward_outs = vision_tower(pixel_values, output_hidden_states=True)
image_features = image_forward_outs.hidden_states[select_layer]
