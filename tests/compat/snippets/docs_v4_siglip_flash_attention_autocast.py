# Source: transformers 4.x docs page "SigLIP", "Combining SigLIP and Flash Attention 2"
#   (https://huggingface.co/docs/transformers/v4.49.0/model_doc/siglip)
# Edits: re-typed; same calls, arguments (torch_dtype=torch.float16, device_map=device, torch.autocast), id, URL.
# Requires: cuda, flash_attn
import requests
import torch
from PIL import Image

from transformers import SiglipModel, SiglipProcessor

device = "cuda"  # the device to load the model onto

model = SiglipModel.from_pretrained(
    "google/siglip-so400m-patch14-384",
    attn_implementation="flash_attention_2",
    torch_dtype=torch.float16,
    device_map=device,
)
processor = SiglipProcessor.from_pretrained("google/siglip-so400m-patch14-384")

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)

candidate_labels = ["2 cats", "2 dogs"]
texts = [f"This is a photo of {label}." for label in candidate_labels]
inputs = processor(text=texts, images=image, padding="max_length", return_tensors="pt")
inputs.to(device)

with torch.no_grad():
    with torch.autocast(device):
        outputs = model(**inputs)

logits_per_image = outputs.logits_per_image
probs = torch.sigmoid(logits_per_image)
print(f"{probs[0][0]:.1%} that image 0 is '{candidate_labels[0]}'")
