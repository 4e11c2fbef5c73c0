"""SigLIP configurations: the same field names, defaults and `config.json` files as transformers.

Released checkpoints store sparse `config.json` files (only the keys that differ from the defaults), so every
default below must equal transformers'. Keys we do not know are kept as attributes and written back, so a file
round-trips through us unchanged in meaning.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .hub import CONFIG_NAME, CheckpointError, read_json, resolve_file, staged_directory

# Keys transformers writes for its own bookkeeping; they describe the writer, not the model.
_BOOKKEEPING_KEYS = ("transformers_version", "_name_or_path", "_commit_hash", "siglip_version")
_HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None or isinstance(dtype, str):
        return dtype
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    raise TypeError(f"torch_dtype must be a torch.dtype or its name, got {dtype!r}")


@dataclass(init=False)
class PretrainedConfig:
    """Fields every transformers config has, plus loading, saving and unknown-key bookkeeping.

    Construct with keyword arguments; keys that are not fields are kept as attributes (as transformers does)
    and written back by `to_dict`. `attn_implementation` ("sdpa" or "eager") is a run-time choice and is not
    saved.
    """

    model_type: ClassVar[str] = ""
    base_config_key: ClassVar[str | None] = None

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
        if cls.base_config_key and found_type == SiglipConfig.model_type:
            config_dict = dict(config_dict.get(cls.base_config_key) or {})
            found_type = config_dict.get("model_type")
        if found_type not in (None, cls.model_type):
            raise ValueError(
                f"{cls.__name__} expects model_type '{cls.model_type}', but the config has '{found_type}'"
                + (
                    ". SigLIP 2 NaFlex checkpoints (model_type 'siglip2') are not supported yet."
                    if found_type in ("siglip2", "siglip2_text_model", "siglip2_vision_model")
                    else "."
                )
            )
        config_dict.update(kwargs)
        return cls(**config_dict)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PretrainedConfig:
        return cls.from_dict(read_json(path))

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> PretrainedConfig:
        """Load from a checkpoint directory or hub id (`revision`, `cache_dir`, `local_files_only`, `token`).

        Other keyword arguments override values of the file, e.g. `num_labels=10`.
        """
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        path = resolve_file(pretrained_model_name_or_path, CONFIG_NAME, **hub_kwargs)
        try:
            config = cls.from_dict(read_json(path), **kwargs)
        except (TypeError, ValueError) as err:
            overrides = f" with overrides {kwargs}" if kwargs else ""
            raise CheckpointError(f"Invalid config '{path}'{overrides}: {err}") from err
        config.name_or_path = os.fspath(pretrained_model_name_or_path)
        return config

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `config.json` into `save_directory` (created if needed)."""
        with staged_directory(save_directory) as staging:
            self.to_json_file(staging / CONFIG_NAME)

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())


@dataclass(init=False)
class SiglipTextConfig(PretrainedConfig):
    """Text tower configuration (defaults are `google/siglip-base-patch16-224`).

    `max_position_embeddings` is the text length the model was trained with (64; 16 for so400m-224).
    `projection_size` is the width of the text head's output; it defaults to `hidden_size` (1536 for the
    SigLIP 2 giant-opt text head). `bos_token_id` and `eos_token_id` are CLIP leftovers that SigLIP never uses.
    """

    model_type: ClassVar[str] = "siglip_text_model"
    base_config_key: ClassVar[str | None] = "text_config"

    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 64
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407
    projection_size: int | None = None

    def __post_init__(self) -> None:
        if self.projection_size is None:
            self.projection_size = self.hidden_size
        _check_heads(self)


@dataclass(init=False)
class SiglipVisionConfig(PretrainedConfig):
    """Vision tower configuration (defaults are `google/siglip-base-patch16-224`).

    The image is cut into `(image_size // patch_size) ** 2` patches, each with a learned position embedding.
    `vision_use_head=False` drops the attention-pooling head (PaliGemma-style towers): `pooler_output` is None.
    """

    model_type: ClassVar[str] = "siglip_vision_model"
    base_config_key: ClassVar[str | None] = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    vision_use_head: bool = True

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):  # transformers' type allows a pair; SigLIP uses squares
                if len(value) != 2 or value[0] != value[1]:
                    raise ValueError(f"{name} must be one int (square), got {value!r}")
                setattr(self, name, int(value[0]))
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        _check_heads(self)


def _check_heads(config: SiglipTextConfig | SiglipVisionConfig) -> None:
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"hidden_size {config.hidden_size} is not divisible by num_attention_heads "
            f"{config.num_attention_heads}"
        )


def _sub_config(value: Any, config_cls: type[PretrainedConfig]) -> PretrainedConfig:
    if value is None:
        return config_cls()
    if isinstance(value, config_cls):
        return value
    if isinstance(value, dict):
        return config_cls.from_dict(value)
    raise TypeError(f"expected a {config_cls.__name__} or a dict, got {type(value).__name__}")


@dataclass(init=False)
class SiglipConfig(PretrainedConfig):
    """Configuration of the two-tower `SiglipModel`: a text config, a vision config and `initializer_factor`.

    `text_config` / `vision_config` may be config objects, dictionaries (as in `config.json`) or None for
    the defaults. `num_labels` / `id2label` are used by `SiglipForImageClassification`.
    """

    model_type: ClassVar[str] = "siglip"

    text_config: SiglipTextConfig = field(default_factory=SiglipTextConfig)
    vision_config: SiglipVisionConfig = field(default_factory=SiglipVisionConfig)
    initializer_factor: float = 1.0

    def __init__(
        self,
        text_config: SiglipTextConfig | dict | None = None,
        vision_config: SiglipVisionConfig | dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(text_config=text_config, vision_config=vision_config, **kwargs)

    def __post_init__(self) -> None:
        self.text_config = _sub_config(self.text_config, SiglipTextConfig)
        self.vision_config = _sub_config(self.vision_config, SiglipVisionConfig)

    @classmethod
    def from_text_vision_configs(
        cls, text_config: SiglipTextConfig, vision_config: SiglipVisionConfig, **kwargs: Any
    ) -> SiglipConfig:
        """Combine two tower configs into a `SiglipConfig`."""
        return cls(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), **kwargs)
