# Source: huggingface/transformers v5.24.0, src/transformers/models/siglip2/modeling_siglip2.py,
#   Siglip2Model.get_text_features docstring example
# Edits: re-typed as a script (doctest prompts dropped); same calls, arguments and id.
import torch

from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained("google/siglip2-base-patch16-224")
tokenizer = AutoTokenizer.from_pretrained("google/siglip2-base-patch16-224")

# padding="max_length" is how the model was trained
inputs = tokenizer(["a photo of a cat", "a photo of a dog"], padding="max_length", return_tensors="pt")
with torch.no_grad():
    text_features = model.get_text_features(**inputs)
