"""Checkpoint converters: open_clip, timm and big_vision checkpoints in; ours back out to open_clip.

`convert(src, to)` reads an open_clip SigLIP checkpoint (a weights file, an open_clip training checkpoint, or a
folder with `open_clip_config.json`), a timm SigLIP image tower (a weights file, or a hub-style folder whose
`config.json` names the `architecture`) or a big_vision `.npz` (SigLIP, or SigLIP 2 NaFlex: a `Siglip2Model`),
detects its architecture, and writes a checkpoint folder that `siglip` and transformers load.
`to_open_clip(src, out)` goes back: a `SiglipModel` folder becomes `open_clip_config.json` +
`open_clip_model.safetensors` for `open_clip.create_model_and_transforms` (open_clip has no NaFlex model).

The key remapping lives in pure functions (`open_clip.open_clip_to_siglip`, `timm.timm_to_siglip`,
`big_vision.big_vision_to_siglip`, `open_clip.siglip_to_open_clip`); this module reads and writes the files.
Every source tensor is used or named as dropped, every target tensor is checked for its shape, nothing is
initialised at random, and a failed conversion leaves no output folder behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from ..siglip.configuration import SiglipConfig, SiglipVisionConfig
from ..siglip.image_processing import SiglipImageProcessor
from ..siglip.modeling import SiglipModel, SiglipVisionModel
from ..siglip2.configuration import Siglip2Config
from ..siglip2.image_processing import Siglip2ImageProcessor
from ..siglip2.modeling import Siglip2Model
from ..staging import remove_abandoned_staging, staged_new_directory
from ..weights import load_pickled_tensors, torch_file_format
from . import big_vision, open_clip, timm
from ._rules import ConversionError, Converted, Tensors, check_shapes

__all__ = ["Architecture", "ConversionError", "convert", "detect", "to_open_clip"]

FAMILIES = ("open_clip", "timm", "big_vision")
TOKENIZER_FILES = ("spiece.model", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")  # fmt: skip
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")  # fmt: skip
TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
OPEN_CLIP_OUTPUT = "open_clip_model.safetensors"
Config = SiglipConfig | Siglip2Config | SiglipVisionConfig
MODEL_CLASSES = {
    SiglipConfig: SiglipModel,
    Siglip2Config: Siglip2Model,
    SiglipVisionConfig: SiglipVisionModel,
}
_TOKENIZER_HUB = {
    32000: "timm/ViT-B-16-SigLIP",
    250000: "timm/ViT-B-16-SigLIP-i18n-256",
    256000: "timm/ViT-B-16-SigLIP2",
}


@dataclass
class Architecture:
    """What a source checkpoint is: its family, its name there (or its dimensions), and our config for it."""

    family: str
    name: str
    config: Config
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.family} {self.name}"


@dataclass
class _Source:
    path: Path  # the weights file
    family: str
    tensors: Tensors
    model_cfg: dict[str, Any] | None = None  # open_clip's, from open_clip_config.json
    timm_name: str | None = None  # from a timm folder's config.json
    folder: Path | None = None  # where tokenizer files may lie


def convert(src: str | os.PathLike, to: str | os.PathLike, arch: str | None = None) -> Architecture:
    """Convert an open_clip, timm or big_vision checkpoint at `src` into a siglip/transformers folder `to`.

    Args:
        src: a weights file (`.bin`, `.pt`, `.pth`, `.safetensors`, `.npz`) or a folder holding one with its
            config (`open_clip_config.json`, or timm's `config.json`).
        to: the output folder; it must not exist or be empty. It receives `config.json`, `model.safetensors`,
            `preprocessor_config.json` and the source's tokenizer files, if it has any.
        arch: overrides the detected architecture: a family (`open_clip`, `timm`, `big_vision`), an open_clip
            SigLIP configuration name (`ViT-B-16-SigLIP`) or a timm tower name (`vit_base_patch16_siglip_224`).

    Returns:
        The architecture converted, with notes (tolerances, tensors dropped, tokenizer files to add).

    Raises:
        ConversionError: the source cannot be read or converted; the message names the file and the tensor.
    """
    target = Path(to)
    _check_new(target)
    source = _read_source(Path(src), arch)
    architecture, converted = _convert(source, arch)
    config = architecture.config
    tokenizer = [
        source.folder / n for n in TOKENIZER_FILES if source.folder and (source.folder / n).is_file()
    ]
    if not isinstance(config, SiglipVisionConfig) and not tokenizer:
        vocab = config.text_config.vocab_size
        wanted = open_clip.TOKENIZERS.get(vocab, f"a tokenizer with a vocabulary of {vocab}")
        if isinstance(config, Siglip2Config) and vocab == 256000:  # NaFlex: released with Siglip2Tokenizer
            wanted = "the tokenizer files of google/siglip2-base-patch16-naflex (a Siglip2Tokenizer)"
        architecture.notes.append(f"the source carries no tokenizer: add to '{target}' {wanted}")
    with _output(target) as staging:
        with torch.device("meta"):
            model = MODEL_CLASSES[type(config)](config)
        model.load_state_dict(converted.tensors, strict=True, assign=True)
        model.save_pretrained(staging)
        _image_processor(config).save_pretrained(staging)
        for file in tokenizer:
            shutil.copyfile(file, staging / file.name)
    return architecture


def _image_processor(config: Config) -> SiglipImageProcessor | Siglip2ImageProcessor:
    if isinstance(config, Siglip2Config):  # 256 patches per image, as the released NaFlex processors
        return Siglip2ImageProcessor(patch_size=config.vision_config.patch_size)
    vision = config if isinstance(config, SiglipVisionConfig) else config.vision_config
    return SiglipImageProcessor(size={"height": vision.image_size, "width": vision.image_size})


def detect(src: str | os.PathLike, arch: str | None = None) -> Architecture:
    """The architecture of the checkpoint at `src` (as `convert` would convert it), without writing anything."""
    source = _read_source(Path(src), arch)
    return _convert(source, arch)[0]


def to_open_clip(src: str | os.PathLike, out: str | os.PathLike) -> Architecture:
    """Write the `SiglipModel` checkpoint folder `src` as an open_clip checkpoint folder `out`.

    `out` receives `open_clip_config.json`, `open_clip_model.safetensors` and `src`'s tokenizer files; load it
    with `open_clip.create_model_and_transforms("local-dir:OUT")`, or with the open_clip configuration's name
    and `pretrained="OUT/open_clip_model.safetensors"`. open_clip builds image towers from timm model names
    only, so the vision tower must have the architecture of a released timm SigLIP tower.
    """
    src_path, target = Path(src), Path(out)
    _check_new(target)
    config_file = src_path / "config.json"
    if config_file.is_file() and _json(config_file).get("model_type") == Siglip2Config.model_type:
        raise ConversionError(
            f"'{src_path}' is a SigLIP 2 NaFlex model (model_type 'siglip2'); open_clip has no NaFlex model "
            "(its SigLIP 2 configurations are fixed-resolution), so it cannot be written for open_clip."
        )
    config = SiglipConfig.from_pretrained(src_path)
    model = SiglipModel.from_pretrained(src_path, dtype="auto")
    vision = config.vision_config
    tower = timm.find_tower(vision)
    if tower is None or not vision.vision_use_head:
        raise ConversionError(
            f"'{src_path}': the vision tower (width {vision.hidden_size}, {vision.num_hidden_layers} layers, "
            f"{vision.num_attention_heads} heads, MLP {vision.intermediate_size}, patch {vision.patch_size}, "
            f"image {vision.image_size}) is no released timm SigLIP tower, and open_clip builds image towers "
            "from timm names only."
        )
    if vision.layer_norm_eps != 1e-6:
        raise ConversionError(
            f"'{src_path}': vision layer_norm_eps {vision.layer_norm_eps}; timm's towers use 1e-6."
        )
    converted = open_clip.siglip_to_open_clip(Tensors(model.state_dict(), str(src_path)), config)
    named = open_clip.find_arch(config)
    architecture = Architecture(
        "open_clip", named.name if named else f"custom (timm tower {tower.name})", config
    )
    if tower.exact_gelu and vision.hidden_act == "gelu_pytorch_tanh":
        architecture.notes.append(
            f"timm's {tower.name} computes the exact GELU where this model uses the tanh approximation: "
            "open_clip's image embeddings differ by that approximation (~1e-3)"
        )
    vocab = config.text_config.vocab_size
    model_cfg = open_clip.open_clip_config(config, tower, _TOKENIZER_HUB.get(vocab, src_path.name))
    tokenizer = [src_path / n for n in TOKENIZER_FILES if (src_path / n).is_file()]
    with _output(target) as staging:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in converted.tensors.items()}, str(staging / OPEN_CLIP_OUTPUT))
        (staging / "open_clip_config.json").write_text(
            json.dumps(model_cfg, indent=2) + "\n", encoding="utf-8"
        )
        for file in tokenizer:
            shutil.copyfile(file, staging / file.name)
    return architecture


@contextlib.contextmanager
def _output(target: Path) -> Iterator[Path]:
    """A staging folder that becomes `target` when all its files are written: a failure, a full disk or a
    `kill -9` leaves no `target` (nor, by the next run, any staging); writing errors name `target`."""
    try:
        with staged_new_directory(target) as staging:
            yield staging
    except (OSError, SafetensorError) as err:
        raise ConversionError(f"cannot write '{target}': {_reason(err)}") from err


def _reason(err: Exception) -> str:
    """An error while writing, in a few words: its errno's message, whether the OS or safetensors raised it
    ("... (os error 28)"), and for a full disk what to do."""
    found = re.search(r"\(os error (\d+)\)", str(err))
    code = err.errno if isinstance(err, OSError) else int(found.group(1)) if found else None
    reason = os.strerror(code) if code else str(err)
    if code in (errno.ENOSPC, errno.EDQUOT):
        reason += "; free some space and run the command again"
    return reason


def _check_new(target: Path) -> None:
    """Refuse an output folder that exists and holds anything but what killed conversions left."""
    if target.is_dir():
        remove_abandoned_staging(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConversionError(f"'{target}' already exists and is not an empty folder; choose a new one.")


def _convert(source: _Source, arch: str | None) -> tuple[Architecture, Converted]:
    tensors = source.tensors
    named_clip = open_clip.arch(arch) if arch and arch.startswith("ViT-") else None
    named_tower = timm.tower(arch) if arch and arch.startswith("vit_") else None
    if source.family == "open_clip":
        if named_tower:
            raise ConversionError(
                f"--arch {arch} is a timm tower, but '{source.path}' is an open_clip checkpoint."
            )
        config = (
            named_clip.config() if named_clip else open_clip.config_from_open_clip(tensors, source.model_cfg)
        )
        converted = open_clip.open_clip_to_siglip(tensors, config)
        named = named_clip or open_clip.find_arch(config)
        architecture = Architecture("open_clip", named.name if named else _describe(config), config)
        exact_text = named.exact_text_gelu if named else _exact_text_gelu(source.model_cfg)
        tower_name = (source.model_cfg or {}).get("vision_cfg", {}).get("timm_model_name")
        tower = (
            named.tower
            if named
            else timm.tower(tower_name)
            if tower_name
            else timm.find_tower(config.vision_config)
        )
        architecture.notes += _gelu_notes(exact_text, tower.exact_gelu if tower else None)
    elif source.family == "timm":
        if named_clip:
            raise ConversionError(
                f"--arch {arch} is an open_clip configuration, but '{source.path}' is a timm tower."
            )
        given = named_tower or (timm.tower(source.timm_name) if source.timm_name else None)
        config = given.vision_config() if given else timm.vision_config_from_timm(tensors)
        converted = timm.timm_to_siglip(tensors, config)
        tower = given or timm.find_tower(config)
        architecture = Architecture("timm", tower.name if tower else _describe_vision(config), config)
        architecture.notes += _gelu_notes(None, tower.exact_gelu if tower else None)
        if not config.vision_use_head:
            architecture.notes.append(
                "a `_gap` tower has no attention-pooling head: timm's pooled output is "
                "`last_hidden_state.mean(1)` of the SiglipVisionModel (whose pooler_output is None)"
            )
    else:
        if named_clip or named_tower:
            raise ConversionError(
                f"--arch {arch} names an open_clip/timm model, but '{source.path}' is big_vision."
            )
        config = big_vision.config_from_big_vision(tensors)
        converted = big_vision.big_vision_to_siglip(tensors, config)
        architecture = Architecture("big_vision", big_vision.name(config), config)
    architecture.notes += converted.notes
    architecture.notes += [f"dropped '{key}': {why}" for key, why in converted.dropped.items()]
    with torch.device("meta"):
        expected = {k: v.shape for k, v in MODEL_CLASSES[type(config)](config).state_dict().items()}
    check_shapes(converted, expected, str(source.path))
    return architecture, converted


def _gelu_notes(exact_text: bool | None, exact_vision: bool | None) -> list[str]:
    towers = [name for name, exact in (("text", exact_text), ("image", exact_vision)) if exact]
    if not towers:
        return []
    return [
        f"the source's {' and '.join(towers)} tower(s) compute the exact GELU; siglip (like transformers and "
        "big_vision) uses the tanh approximation: embeddings differ by that approximation (~1e-3)"
    ]


def _exact_text_gelu(model_cfg: dict[str, Any] | None) -> bool | None:
    if model_cfg is None:
        return None
    act = model_cfg.get("text_cfg", {}).get("act_kwargs", {})
    return act.get("approximate") != "tanh"


def _describe_vision(config: SiglipVisionConfig) -> str:
    return (f"custom tower (width {config.hidden_size}, {config.num_hidden_layers} layers, patch "
            f"{config.patch_size}, image {config.image_size})")  # fmt: skip


def _describe(config: SiglipConfig) -> str:
    text = config.text_config
    return (f"custom model ({_describe_vision(config.vision_config)}; text width {text.hidden_size}, "
            f"{text.num_hidden_layers} layers, vocabulary {text.vocab_size}, {text.max_position_embeddings} tokens)")  # fmt: skip


def _read_source(path: Path, arch: str | None) -> _Source:
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
        elif (path / "config.json").is_file() and "architecture" in _json(path / "config.json"):
            timm_name = str(_json(path / "config.json")["architecture"])
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
    tensors = Tensors(_load(path), str(path))
    family = arch if arch in FAMILIES else _family(tensors, path)
    if arch in FAMILIES and family != _family(tensors, path):
        raise ConversionError(
            f"--arch {arch}: '{path}' is not in {arch}'s layout ({_family(tensors, path)})."
        )
    return _Source(path, family, tensors, model_cfg, timm_name, folder)


def _family(tensors: Tensors, path: Path) -> str:
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


def _load(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file; an unreadable (e.g. truncated) file, or one in a format we do not read,
    gives an error naming it."""
    if not _in_its_format(path):
        raise ConversionError(
            f"'{path}' is not in a checkpoint format siglip converts (its first bytes are not those of "
            f"{_FORMATS.get(path.suffix, _FORMATS[''])}): convert reads torch.save files (.bin, .pt, .pth), "
            ".safetensors files and big_vision .npz files"
        )
    if path.suffix not in (".npz", ".safetensors"):
        # torch.save files, zip or legacy: read without running their pickled code
        loaded = load_pickled_tensors(path, error=ConversionError)
    else:
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as arrays:
                    return big_vision.strip_prefix({key: arrays[key] for key in arrays.files})
            from safetensors.torch import load_file

            return load_file(str(path))
        except Exception as err:  # zipfile, numpy and safetensors each raise their own types
            raise ConversionError(f"'{path}' cannot be read (truncated or not a checkpoint): {err}") from err
    if isinstance(loaded, dict) and isinstance(
        loaded.get("state_dict"), dict
    ):  # an open_clip training checkpoint
        loaded = loaded["state_dict"]
        if loaded and all(k.startswith("module.") for k in loaded):
            loaded = {k[len("module.") :]: v for k, v in loaded.items()}
    if not isinstance(loaded, dict) or not loaded:
        raise ConversionError(f"'{path}' holds no state dict (found {type(loaded).__name__}).")
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"'{path}': entry '{key}' is a {type(value).__name__}, not a tensor.")
    return loaded


_FORMATS = {".npz": "a .npz (zip) file", ".safetensors": "a .safetensors file", "": "a torch.save file"}


def _in_its_format(path: Path) -> bool:
    """Whether the file's first bytes are those of the format its suffix names (a torch.save file for any
    suffix but .npz and .safetensors)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return True  # the reader names what the file system refused
    if path.suffix == ".npz":
        return head.startswith(b"PK\x03\x04")
    if path.suffix == ".safetensors":  # the header's length (8 bytes), then the header, a JSON object
        return head[8:9] == b"{"
    return torch_file_format(path) is not None


def _first(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ConversionError(f"'{folder}' has no weights file: looked for {', '.join(names)}.")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConversionError(f"'{path}' is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConversionError(f"'{path}' should hold a JSON object.")
    return data


def _model_cfg(path: Path) -> dict[str, Any]:
    data = _json(path)
    if not isinstance(data.get("model_cfg"), dict):
        raise ConversionError(f"'{path}' has no 'model_cfg'.")
    return data["model_cfg"]
