# Source: huggingface/transformers v5.24.0, src/transformers/models/siglip2/modeling_siglip2.py,
#   Siglip2TextModel.forward docstring example
# Edits: re-typed as a script (doctest prompts dropped); same calls, arguments and id.
from transformers import AutoTokenizer, Siglip2TextModel

model = Siglip2TextModel.from_pretrained("google/siglip2-base-patch16-224")
tokenizer = AutoTokenizer.from_pretrained("google/siglip2-base-patch16-224")

# padding="max_length" is how the model was trained
inputs = tokenizer(["a photo of a cat", "a photo of a dog"], padding="max_length", return_tensors="pt")

outputs = model(**inputs)
last_hidden_state = outputs.last_hidden_state
pooled_output = outputs.pooler_output  # the pooled (EOS token) states
