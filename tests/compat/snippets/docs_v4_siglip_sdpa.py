# Source: transformers 4.x docs page "SigLIP", "Using Scaled Dot Product Attention (SDPA)"
#   (https://huggingface.co/docs/transformers/v4.49.0/model_doc/siglip; `device` is "cuda" from the section before it on the page)
# Edits: re-typed; same call and arguments; `device = "cuda"` written out.
# Requires: cuda
import torch

from transformers import SiglipModel

device = "cuda"
model = SiglipModel.from_pretrained(
    "google/siglip-so400m-patch14-384",
    attn_implementation="sdpa",
    torch_dtype=torch.float16,
    device_map=device,
)
