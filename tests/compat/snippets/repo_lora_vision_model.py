# Source: GitHub code search, the pattern `model.vision_model = get_peft_model(model.vision_model, LoraConfig(...))`
#   on google/siglip-base-patch16-224 with target_modules q_proj/k_proj/v_proj/out_proj and task_type=None
#   (a short script in a public repository the code index does not name; the issue reports PEFT LoRA as working)
# Edits: re-typed; the harness adds a forward pass of the adapted tower and counts its trainable parameters.
# Requires: peft
import torch
from peft import LoraConfig, get_peft_model

from transformers import AutoModel

model = AutoModel.from_pretrained("google/siglip-base-patch16-224")
config = LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"], task_type=None)
model.vision_model = get_peft_model(model.vision_model, config)
print("LoRA applied successfully!")

trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
size = model.config.vision_config.image_size
pixel_values = torch.rand(1, 3, size, size)
with torch.no_grad():
    image_embeds = model.get_image_features(pixel_values=pixel_values)
