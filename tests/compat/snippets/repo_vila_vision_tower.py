# Source: GitHub repo gheinrich/VILA, llava/model/multimodal_encoder/siglip_encoder.py (a VLM's vision tower:
#   config, image processor and frozen SiglipVisionModel from `transformers.models.siglip`)
# Edits: the class's load steps written out as a script on google/siglip-so400m-patch14-384; the harness adds
#   a forward pass with output_hidden_states=True, as the tower's forward does.
import requests
import torch
from PIL import Image

from transformers.models.siglip import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

vision_tower_name = "google/siglip-so400m-patch14-384"
cfg_only = SiglipVisionConfig.from_pretrained(vision_tower_name)
image_processor = SiglipImageProcessor.from_pretrained(vision_tower_name)
vision_tower = SiglipVisionModel.from_pretrained(vision_tower_name)
vision_tower.requires_grad_(False)

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)
pixel_values = image_processor(image, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    image_forward_outs = vision_tower(pixel_values, output_hidden_states=True)
image_features = image_forward_outs.hidden_states[-2]
hidden_size, image_size = cfg_only.hidden_size, cfg_only.image_size
