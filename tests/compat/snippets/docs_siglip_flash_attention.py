# Source: huggingface/transformers docs/source/en/model_doc/siglip.md (transformers 5.x docs page "SigLIP", notes: attn_implementation="flash_attention_2")
# Edits: re-typed; same call and arguments.
# Requires: cuda, flash_attn
from transformers import SiglipModel

model = SiglipModel.from_pretrained(
    "google/siglip-so400m-patch14-384",
    attn_implementation="flash_attention_2",
    device_map="auto",
)
