# Source: GitHub repo hebangwen/blog-demo-codes, siglip2/demo.py (google/siglip2-base-patch16-384, prints the model)
# Edits: re-typed; same calls, arguments, id and URL.
# Requires: accelerate  (transformers needs it for device_map=)
# Oracle-fails: written for transformers 4.x, where get_image_features returns a tensor; transformers 5
#   returns a BaseModelOutputWithPooling, which has no `.shape`
# Oracle-fails: written for transformers 4.x, where get_image_features returns a tensor; transformers 5
#   returns a BaseModelOutputWithPooling, which has no `.shape`
import torch

from transformers import AutoModel, AutoProcessor
from transformers.image_utils import load_image

ckpt = "google/siglip2-base-patch16-384"
model = AutoModel.from_pretrained(ckpt, device_map="auto").eval()
processor = AutoProcessor.from_pretrained(ckpt)
print(model)

image = load_image("https://huggingface.co/datasets/merve/coco/resolve/main/val2017/000000000285.jpg")
inputs = processor(images=[image], return_tensors="pt").to(model.device)

with torch.no_grad():
    image_embeddings = model.get_image_features(**inputs)

print(image_embeddings.shape)
