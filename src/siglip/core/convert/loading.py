"""Loading a source checkpoint's files: the tensors of a weights file (torch.save, safetensors, big_vision
.npz), checked to be in the format their suffix names and read without running pickled code, and JSON
configs. Every failure is a `ConversionError` naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..weights import load_pickled_tensors, torch_file_format
from . import big_vision
from ._rules import ConversionError

_FORMATS = {".npz": "a .npz (zip) file", ".safetensors": "a .safetensors file", "": "a torch.save file"}


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
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


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConversionError(f"'{path}' is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConversionError(f"'{path}' should hold a JSON object.")
    return data
