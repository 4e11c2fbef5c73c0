# Source: huggingface/transformers v5.24.0, src/transformers/pipelines/zero_shot_image_classification.py,
#   ZeroShotImageClassificationPipeline docstring example (the task is inferred from the model)
# Edits: re-typed as a script (doctest prompts dropped); same calls, arguments, id and URL; results kept.
# Oracle-fails: offline, transformers cannot infer the task (pipeline() without task= asks the hub for it)
from transformers import pipeline

classifier = pipeline(model="google/siglip-so400m-patch14-384")
animals = classifier(
    "https://huggingface.co/datasets/Narsil/image_dummy/raw/main/parrots.png",
    candidate_labels=["animals", "humans", "landscape"],
)
styles = classifier(
    "https://huggingface.co/datasets/Narsil/image_dummy/raw/main/parrots.png",
    candidate_labels=["black and white", "photorealist", "painting"],
)
