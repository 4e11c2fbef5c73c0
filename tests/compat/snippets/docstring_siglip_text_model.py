# Source: huggingface/transformers v5.24.0, src/transformers/models/siglip/modeling_siglip.py,
#   SiglipTextModel.forward docstring example
# Edits: re-typed as a script (doctest prompts dropped); same calls, arguments and id.
from transformers import AutoTokenizer, SiglipTextModel

model = SiglipTextModel.from_pretrained("google/siglip-base-patch16-224")
tokenizer = AutoTokenizer.from_pretrained("google/siglip-base-patch16-224")

# padding="max_length" is how the model was trained
inputs = tokenizer(["a photo of a cat", "a photo of a dog"], padding="max_length", return_tensors="pt")

outputs = model(**inputs)
last_hidden_state = outputs.last_hidden_state
pooled_output = outputs.pooler_output  # the pooled (EOS token) states
