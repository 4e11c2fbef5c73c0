"""`PretrainedConfig`: the fields every transformers config has, and reading and writing `config.json`.

Each model family's configs derive from it. Keys a config class does not know are kept as attributes and
written back, so a file round-trips through us unchanged in meaning.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import CheckpointError
from .hub import CONFIG_NAME, Checkpoint, HubOptions, locate, read_json
from .push_to_hub import PushToHubMixin
from .staging import staged_directory

logger = logging.getLogger("siglip")

# Keys transformers writes for its own bookkeeping; they describe the writer, not the model.
_BOOKKEEPING_KEYS = ("transformers_version", "_name_or_path", "_commit_hash", "siglip_version")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
# loading options a config keeps as values (transformers sets the config's dtype from them)
CONFIG_DTYPE_OPTIONS = ("dtype", "torch_dtype", "attn_implementation")


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None or isinstance(dtype, str):
        return dtype
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    raise TypeError(f"torch_dtype must be a torch.dtype or its name, got {dtype!r}")


# model_type -> family prefix of its classes, to name the right class when a checkpoint meets the wrong one
_FAMILIES = {
    "siglip": "Siglip",
    "siglip_text_model": "Siglip",
    "siglip_vision_model": "Siglip",
    "siglip2": "Siglip2",
    "siglip2_text_model": "Siglip2",
    "siglip2_vision_model": "Siglip2",
}


# model_types whose text tower any text config loads (both families share it), and the two-tower ones among them
_TWO_TOWER_TYPES = ("siglip", "siglip2")
_TEXT_TWINS = (*_TWO_TOWER_TYPES, "siglip_text_model", "siglip2_text_model")


def _family_hint(class_name: str, found_type: str | None) -> str:
    """ ". This is a ... checkpoint: use X" when `found_type` belongs to the other SigLIP family, else "."."""
    family = _FAMILIES.get(found_type)
    for own in ("Siglip2", "Siglip"):
        if class_name.startswith(own):
            break
    else:
        return "."
    if family is None or family == own:
        return "."
    config_name = family + class_name.removeprefix(own)  # e.g. SiglipVisionConfig -> Siglip2VisionConfig
    model_name = config_name.removesuffix("Config") + "Model"
    what = (
        "a SigLIP 2 NaFlex checkpoint (native aspect ratio, variable number of patches)"
        if family == "Siglip2"
        else "a SigLIP checkpoint (SigLIP 1 or SigLIP 2 fixed resolution)"
    )
    return f". This is {what}: load it with siglip.{model_name} (its config class is siglip.{config_name})."


@dataclass(init=False)
class PretrainedConfig(PushToHubMixin):
    """Fields every transformers config has, plus loading, saving and unknown-key bookkeeping.

    Construct with keyword arguments; keys that are not fields are kept as attributes (as transformers does)
    and written back by `to_dict`. `attn_implementation` ("sdpa", "eager" or "flash_attention_2") is a run-time
    choice and is not saved.
    """

    model_type: ClassVar[str] = ""
    base_config_key: ClassVar[str | None] = None  # a tower config: its key in the two-tower config
    parent_model_type: ClassVar[str | None] = None  # a tower config: the two-tower config's model_type

    output_hidden_states: bool = False
    output_attentions: bool = False
    return_dict: bool = True
    torch_dtype: str | None = None
    architectures: list[str] | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None

    def __init__(self, **kwargs: Any) -> None:
        if "dtype" in kwargs:  # transformers 5 writes `dtype`, 4.x wrote `torch_dtype`
            kwargs.setdefault("torch_dtype", kwargs.pop("dtype"))
        num_labels = kwargs.pop("num_labels", None)
        attn_implementation = kwargs.pop("attn_implementation", None) or "sdpa"
        kwargs.pop("model_type", None)
        for key in _BOOKKEEPING_KEYS:
            kwargs.pop(key, None)
        for f in dataclasses.fields(self):
            if f.name in kwargs:
                value = kwargs.pop(f.name)
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = copy.deepcopy(f.default)
            setattr(self, f.name, value)
        self._extra_keys = list(kwargs)
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.torch_dtype = _dtype_name(self.torch_dtype)
        if self.id2label is not None:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
        elif num_labels is None:
            num_labels = 2  # transformers' default
        if num_labels is not None:
            self.num_labels = num_labels
        if self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}
        self.__post_init__()
        self.attn_implementation = attn_implementation

    def __post_init__(self) -> None:
        """Derive and validate fields after construction."""

    @property
    def num_labels(self) -> int:
        return len(self.id2label or {})

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if self.id2label is None or len(self.id2label) != value:
            self.id2label = {i: f"LABEL_{i}" for i in range(value)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def name_or_path(self) -> str:
        """Where the config was loaded from ("" if built in code); not saved."""
        return getattr(self, "_name_or_path", "")

    @name_or_path.setter
    def name_or_path(self, value: str) -> None:
        self._name_or_path = value

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    @property
    def attn_implementation(self) -> str:
        return self._attn_implementation

    @attn_implementation.setter
    def attn_implementation(self, value: str) -> None:
        if value not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {value!r}")
        self._attn_implementation = value
        for f in dataclasses.fields(self):  # a SigLIP config passes the choice on to its towers
            sub = getattr(self, f.name)
            if isinstance(sub, PretrainedConfig):
                sub.attn_implementation = value

    # --- dictionaries and files -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All fields (nested configs as dictionaries) plus unknown keys, in the form `config.json` stores."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, PretrainedConfig):
                value = value.to_dict()
            elif f.name == "id2label" and value is not None:
                value = {str(k): v for k, v in value.items()}
            out[f.name] = copy.deepcopy(value)
        for key in self._extra_keys:
            out[key] = copy.deepcopy(getattr(self, key))
        out["model_type"] = self.model_type
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> PretrainedConfig:
        """Build a config from a `config.json` dictionary; `kwargs` override its values.

        A tower config (`SiglipTextConfig`, `SiglipVisionConfig`) given a full SigLIP dictionary takes its own
        sub-dictionary (`text_config` / `vision_config`).
        """
        config_dict = dict(config_dict)
        found_type = config_dict.get("model_type")
        own_types = (cls.model_type, cls.parent_model_type)
        if cls.base_config_key == "text_config" and found_type in _TEXT_TWINS and found_type not in own_types:
            # both families have the same text tower: as transformers, either loads from the other's checkpoint
            logger.warning("%s loads the text tower of a '%s' checkpoint", cls.__name__, found_type)
            if found_type in _TWO_TOWER_TYPES:
                config_dict = dict(config_dict.get("text_config") or {})
            found_type = None
        if cls.base_config_key and found_type == cls.parent_model_type:
            config_dict = dict(config_dict.get(cls.base_config_key) or {})
            found_type = config_dict.get("model_type")
        if found_type not in (None, cls.model_type):
            raise ValueError(
                f"{cls.__name__} expects model_type '{cls.model_type}', but the config has '{found_type}'"
                + _family_hint(cls.__name__, found_type)
            )
        config_dict.update(kwargs)
        return cls(**config_dict)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PretrainedConfig:
        return cls.from_dict(read_json(path))

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | Checkpoint, **kwargs: Any
    ) -> PretrainedConfig:
        """Load from a checkpoint directory or hub id (`revision`, `cache_dir`, `local_files_only`, `token`).

        Other keyword arguments override values of the file, e.g. `num_labels=10` or `dtype=torch.float16`;
        the other options of loading a model's weights (`device_map`, ...) are accepted and ignored.
        """
        options = HubOptions.pop_from(kwargs, keep=CONFIG_DTYPE_OPTIONS)
        checkpoint = locate(pretrained_model_name_or_path, options)
        path = checkpoint.file(CONFIG_NAME)
        try:
            config = cls.from_dict(read_json(path), **kwargs)
        except (TypeError, ValueError) as err:
            overrides = f" with overrides {kwargs}" if kwargs else ""
            raise CheckpointError(f"Invalid config '{path}'{overrides}: {err}") from err
        config.name_or_path = checkpoint.name
        return config

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `config.json` into `save_directory` (created if needed)."""
        with staged_directory(save_directory) as staging:
            self.to_json_file(staging / CONFIG_NAME)

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
