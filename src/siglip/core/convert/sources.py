"""Reading a source checkpoint: where its weights file and config lie (a file, an open_clip folder, a timm
folder, a folder with one big_vision .npz), and which family's layout its tensors are in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._rules import ConversionError, Tensors
from .loading import load_tensors, read_json

FAMILIES = ("open_clip", "timm", "big_vision")
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")  # fmt: skip
TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class Source:
    """A source checkpoint read: its weights file, family, tensors and what its folder says about it."""

    path: Path  # the weights file
    family: str
    tensors: Tensors
    model_cfg: dict[str, Any] | None = None  # open_clip's, from open_clip_config.json
    timm_name: str | None = None  # from a timm folder's config.json
    folder: Path | None = None  # where tokenizer files may lie


def read_source(path: Path, arch: str | None) -> Source:
    """The checkpoint at `path` (a weights file or a folder), its family checked against `arch` if it names one."""
    if arch is not None and arch not in FAMILIES and not arch.startswith(("ViT-", "vit_")):
        raise ConversionError(
            f"--arch {arch!r}: give a family ({', '.join(FAMILIES)}), an open_clip SigLIP configuration name "
            "or a timm SigLIP tower name."
        )
    if not path.exists():
        raise ConversionError(f"'{path}' does not exist.")
    model_cfg, timm_name, folder = None, None, None
    if path.is_dir():
        folder = path
        if (path / "open_clip_config.json").is_file():
            model_cfg = _model_cfg(path / "open_clip_config.json")
            path = _first(path, OPEN_CLIP_WEIGHTS)
        elif (path / "config.json").is_file() and "architecture" in read_json(path / "config.json"):
            timm_name = str(read_json(path / "config.json")["architecture"])
            path = _first(path, TIMM_WEIGHTS)
        else:
            npz = sorted(path.glob("*.npz"))
            if len(npz) != 1:
                raise ConversionError(
                    f"'{path}' holds no open_clip checkpoint (open_clip_config.json), timm tower (config.json "
                    "naming its 'architecture') or single big_vision .npz."
                )
            path = npz[0]
    elif (path.parent / "open_clip_config.json").is_file():
        model_cfg, folder = _model_cfg(path.parent / "open_clip_config.json"), path.parent
    tensors = Tensors(load_tensors(path), str(path))
    family = arch if arch in FAMILIES else _family(tensors, path)
    if arch in FAMILIES and family != _family(tensors, path):
        raise ConversionError(
            f"--arch {arch}: '{path}' is not in {arch}'s layout ({_family(tensors, path)})."
        )
    return Source(path, family, tensors, model_cfg, timm_name, folder)


def _family(tensors: Tensors, path: Path) -> str:
    """The family whose layout the tensors are in; CLIP models and checkpoints already in our layout are refused."""
    keys = tensors.keys()
    if path.suffix == ".npz":
        if "img/embedding/kernel" not in tensors or "txt/Embed_0/embedding" not in tensors:
            raise ConversionError(
                f"'{path}': tensors 'img/embedding/kernel' and 'txt/Embed_0/embedding' are missing: not a "
                "big_vision two-tower (SigLIP) checkpoint."
            )
        return "big_vision"
    for clip_key in (
        "visual.class_embedding",
        "visual.conv1.weight",
        "visual.trunk.cls_token",
        "text_projection",
    ):
        if clip_key in tensors:
            raise ConversionError(
                f"'{path}': tensor '{clip_key}' belongs to an open_clip CLIP model (class-token image tower, "
                "softmax contrastive), not to SigLIP; only SigLIP checkpoints convert."
            )
    if any(k.startswith("visual.trunk.") for k in keys) and any(k.startswith("text.") for k in keys):
        return "open_clip"
    if "patch_embed.proj.weight" in tensors:
        return "timm"
    if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        raise ConversionError(
            f"'{path}' is already in the transformers/siglip layout (tensor '{keys[0]}'): load it directly."
        )
    shown = ", ".join(f"'{k}'" for k in keys[:3])
    raise ConversionError(
        f"'{path}': unknown architecture (tensors {shown}, ...): not an open_clip SigLIP, timm SigLIP tower or "
        "big_vision checkpoint."
    )


def _first(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ConversionError(f"'{folder}' has no weights file: looked for {', '.join(names)}.")


def _model_cfg(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data.get("model_cfg"), dict):
        raise ConversionError(f"'{path}' has no 'model_cfg'.")
    return data["model_cfg"]
