# Source: huggingface/transformers docs/source/en/model_doc/siglip2.md (transformers 5.x docs page "SigLIP2", notes: attn_implementation="flash_attention_2")
# Edits: re-typed; same call and arguments. As on the page, `torch` and `device` are used without being
#   defined, so the snippet fails with transformers too.
# Requires: cuda, flash_attn
# Oracle-fails: the docs snippet uses `torch` and `device` without importing or defining them
from transformers import SiglipModel

model = SiglipModel.from_pretrained(
    "google/siglip2-so400m-patch14-384",
    attn_implementation="flash_attention_2",
    dtype=torch.float16,  # noqa: F821
    device_map=device,  # noqa: F821
)
