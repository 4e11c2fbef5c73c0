# Source: GitHub repo tombalestra/m3-spatial, lmm/siglip/debug5.py (the siglip2 model card's embedding code with AutoImageProcessor)
# Edits: re-typed; same calls, arguments, id and URL.
# Requires: accelerate  (transformers needs it for device_map=)
# Oracle-fails: written for transformers 4.x, where get_image_features returns a tensor; transformers 5
#   returns a BaseModelOutputWithPooling, which has no `.shape`
# Oracle-fails: written for transformers 4.x, where get_image_features returns a tensor; transformers 5
#   returns a BaseModelOutputWithPooling, which has no `.shape`
import torch

from transformers import AutoModel, AutoImageProcessor
from transformers.image_utils import load_image

# the model and its processor
ckpt = "google/siglip2-so400m-patch16-512"
model = AutoModel.from_pretrained(ckpt, device_map="auto").eval()
processor = AutoImageProcessor.from_pretrained(ckpt)

# an image
image = load_image("https://huggingface.co/datasets/merve/coco/resolve/main/val2017/000000000285.jpg")
inputs = processor(images=[image], return_tensors="pt").to(model.device)

# inference
with torch.no_grad():
    image_embeddings = model.get_image_features(**inputs)

print(image_embeddings.shape)
