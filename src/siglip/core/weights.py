"""Reading and writing weight files: safetensors (one file or shards with an index) and, for reading, legacy
torch pickles (tensors only, never pickled code); the file names of every layout."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
# In order of preference: the first one a checkpoint has is the one loaded.
WEIGHT_CANDIDATES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
# Weight files of every layout: a new save removes those of an earlier one it does not overwrite.
WEIGHT_FILE_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                        "pytorch_model.bin.index.json")  # fmt: skip


def load_state_dict(
    files: list[Path], device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Read the tensors of one or more weight files onto `device`, floating ones cast to `dtype` if given.

    Safetensors are memory-mapped and read tensor by tensor, each cast as it is read (so a change of dtype
    never holds two copies of the model); `.bin` files (either `torch.save` format) are read by
    `load_pickled_tensors`, which refuses pickled code.
    """

    def cast(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor

    from safetensors import SafetensorError, safe_open

    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            try:
                with safe_open(file, framework="pt", device=str(device)) as f:
                    for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                        state_dict[key] = cast(f.get_tensor(key))
            except (SafetensorError, OSError) as err:
                raise CheckpointError(f"Cannot read safetensors file '{file}': {err}") from err
        else:
            loaded = load_pickled_tensors(file, device)
            if not isinstance(loaded, dict):
                raise CheckpointError(f"'{file}' does not hold a state dict.")
            state_dict.update({key: cast(value) for key, value in loaded.items()})
    return state_dict


def load_pickled_tensors(
    file: Path, device: str | torch.device = "cpu", error: type[CheckpointError] = CheckpointError
) -> Any:
    """What a `torch.save` file holds, in either format (the zip of torch >= 1.6 or the legacy plain pickle),
    read with `torch.load(weights_only=True)`: tensors, containers and numbers only, never pickled code.

    A file that holds code, is damaged, or is no `torch.save` file raises a one-line `error` naming it.
    """
    try:
        kind = torch_file_format(file)
        if kind is not None:  # only the zip format can be memory-mapped
            return torch.load(file, map_location=device, weights_only=True, mmap=kind == "zip")
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ValueError...
        if isinstance(err, OSError) and err.errno is not None:  # the file system refused, not the data
            raise error(f"'{file}' cannot be opened: {(err.strerror or str(err)).lower()}") from None
        # torch's message is a page of advice on unsafe loading; one of its lines says what was found
        lines = str(err).splitlines()
        found = next((ln for ln in lines if "GLOBAL" in ln), None) or next(
            (ln for ln in lines if "WeightsUnpickler error:" in ln), None
        )
        if isinstance(err, pickle.UnpicklingError) and found:
            found = found.split("WeightsUnpickler error:")[-1].split(". Please use")[0].strip().rstrip(".")
            raise error(
                f"Cannot read '{file}' as plain tensors: it holds pickled code or objects ({found}), which siglip "
                "never executes; re-save it as safetensors where you trust it"
            ) from None
        text = " ".join(str(err).split())
        raise error(f"'{file}' cannot be read (truncated or not a checkpoint): {text}") from err
    raise error(
        f"'{file}' is not a checkpoint format siglip reads: not a torch.save file (zip or pickle format), "
        "whose first bytes it would begin with"
    )


_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # torch's magic number, pickled


def torch_file_format(file: str | os.PathLike) -> str | None:
    """The format of a `torch.save` file by its first bytes: "zip" (torch >= 1.6), "pickle" (the legacy format,
    which pickles torch's magic number first), or None for a file of neither."""
    with open(file, "rb") as f:
        head = f.read(32)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    return "pickle" if head.startswith(b"\x80") and _TORCH_MAGIC in head else None


def save_state_dict(
    state_dict: dict[str, torch.Tensor], directory: Path, max_shard_size: int | str = "5GB"
) -> None:
    """Write `state_dict` as `model.safetensors`, or as shards with an index when larger than `max_shard_size`."""
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict(
        {k: v.detach().contiguous() for k, v in state_dict.items()},
        directory,
        max_shard_size=max_shard_size,
        metadata={"format": "pt"},
    )
