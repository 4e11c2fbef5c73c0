"""What tests/test_transformers4.py runs with another transformers: in a subprocess with the python of
.venv-tf4 (transformers 4.x), or imported (5.24). It imports transformers, never siglip.

    python _transformers_worker.py TASKS.json

TASKS.json: {"images": [paths], "texts": [...], "tasks": [task, ...]}, each task {"mode": "load" | "save",
"family": "siglip" | "gemma" | "naflex", "folder": path, "out": path, "config": {...}, "vocab_dir": path}.
"load" loads `folder` with transformers' Auto classes, as a user would; "save" makes a model (random weights,
`config`) and processor (the tokenizer files of `vocab_dir`) with transformers' own classes and saves them
into `folder`. Either way `out` gets `outputs` of that model and processor (torch.save), or the traceback.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from pathlib import Path

import torch
import transformers
from PIL import Image

MAJOR = int(transformers.__version__.split(".")[0])
# 5.x's image processors resize with torchvision unless told otherwise; 4.x's use PIL (as ours do)
PIL_BACKEND = {"use_fast": False} if MAJOR >= 5 else {}
SUFFIX = "Pil" if MAJOR >= 5 else ""  # 5.x's names of the PIL image processors


def load(folder: str) -> tuple:
    """Model and processor of `folder`, loaded as a user of this transformers does."""
    return transformers.AutoModel.from_pretrained(folder), transformers.AutoProcessor.from_pretrained(
        folder, **PIL_BACKEND
    )


def build(family: str, config: dict, vocab_dir: str) -> tuple:
    """A model and processor made with this transformers' own classes (seed 0)."""
    torch.manual_seed(0)
    if family == "naflex":
        model = transformers.Siglip2Model(transformers.Siglip2Config(**config))
        image_processor = getattr(transformers, "Siglip2ImageProcessor" + SUFFIX)(
            patch_size=16, max_num_patches=256
        )
    else:
        model = transformers.SiglipModel(transformers.SiglipConfig(**config))
        image_processor = getattr(transformers, "SiglipImageProcessor" + SUFFIX)(
            size={"height": 32, "width": 32}
        )
    if family == "siglip":
        tokenizer = transformers.SiglipTokenizer.from_pretrained(vocab_dir)
        return model, transformers.SiglipProcessor(image_processor, tokenizer)
    if family == "gemma" or MAJOR < 5:  # 4.x has no Siglip2Tokenizer: its NaFlex processor takes a Gemma one
        tokenizer = transformers.AutoTokenizer.from_pretrained(vocab_dir)  # tokenizer_class: GemmaTokenizer
    else:
        tokenizer = transformers.Siglip2Tokenizer.from_pretrained(vocab_dir)
    processor_class = transformers.Siglip2Processor if family == "naflex" else transformers.SiglipProcessor
    return model, processor_class(image_processor, tokenizer)


def outputs(model, processor, images: list[str], texts: list[str], max_length: int) -> dict:
    """Inputs the processor makes of `images` and `texts`, the model's embeddings and logits on them, and the
    classes and version that gave them. The same code runs siglip's model and processor (tests)."""
    pil_images = [Image.open(path).convert("RGB") for path in images]
    inputs = processor(text=texts, images=pil_images, padding="max_length", truncation=True,
                       max_length=max_length, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        out = model.eval()(**inputs)
    result = {key: value for key, value in inputs.items() if isinstance(value, torch.Tensor)}
    result.update(
        text_embeds=out.text_embeds, image_embeds=out.image_embeds, logits_per_image=out.logits_per_image
    )
    result["classes"] = [type(model).__name__, type(processor.tokenizer).__name__,
                         type(processor.image_processor).__name__]  # fmt: skip
    return result


def run(task: dict, images: list[str], texts: list[str]) -> dict:
    """One task of TASKS.json (see the module docstring)."""
    if task["mode"] == "load":
        model, processor = load(task["folder"])
    else:
        model, processor = build(task["family"], task["config"], task["vocab_dir"])
        model.save_pretrained(task["folder"])
        processor.save_pretrained(task["folder"])
    result = outputs(
        model, processor, images, texts, task["config"]["text_config"]["max_position_embeddings"]
    )
    return {**result, "version": transformers.__version__}


def main() -> None:
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    for task in spec["tasks"]:
        try:
            result = run(task, spec["images"], spec["texts"])
        except Exception:
            result = {"error": traceback.format_exc(), "version": transformers.__version__}
        torch.save(result, task["out"])


if __name__ == "__main__":
    main()
