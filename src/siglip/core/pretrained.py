"""The checkpoint half of every model class: construction from a config, `from_pretrained` and
`save_pretrained` in transformers' file format, and the switches transformers models share.

Loading reads the weight files memory-mapped (`weights.load_state_dict`), builds the model on the meta device (no
memory, no initialisation), maps the checkpoint's keys onto the model's (`state_dict.match_state_dict`, a pure
function) and assigns the tensors. The network itself lives in `modeling.py`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

import torch
from torch import nn

from . import hub, weights
from .config import PretrainedConfig
from .hub import Checkpoint
from .outputs import ModelOutput
from .staging import staged_directory
from .state_dict import match_state_dict, owning_modules

logger = logging.getLogger("siglip")


class PreTrainedModel(nn.Module):
    """Base class: construction from a config, `from_pretrained` / `save_pretrained`, gradient checkpointing."""

    config_class: ClassVar[type[PretrainedConfig]]
    main_input_name: ClassVar[str] = "pixel_values"
    supports_gradient_checkpointing: ClassVar[bool] = True
    # Parameter prefixes a checkpoint may lack; they are freshly initialised (with a warning) when absent.
    _new_head_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config

    def post_init(self) -> None:
        """Initialise all weights, unless built on the meta device (`from_pretrained` replaces them all)."""
        if next(self.parameters()).device.type != "meta":
            self.init_weights()

    def init_weights(self, modules: list[nn.Module] | None = None) -> None:
        """(Re-)initialise the given modules, or the whole model, as a model trained from scratch starts."""
        for module in modules if modules is not None else [self]:
            module.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise one module's own parameters (its children come first); each model family defines it."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.parameters() if p.is_floating_point()).dtype

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each encoder layer in backward instead of storing its activations (training only)."""
        self._set_gradient_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self._set_gradient_checkpointing(False)

    def _set_gradient_checkpointing(self, enabled: bool) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):  # the encoders
                module.gradient_checkpointing = enabled

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def _output_flags(
        self, output_attentions: bool | None, output_hidden_states: bool | None
    ) -> tuple[bool, bool]:
        """The `output_attentions` / `output_hidden_states` of a call, the config's where not given."""
        return (
            self.config.output_attentions if output_attentions is None else output_attentions,
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states,
        )

    def _returned(self, output: ModelOutput, return_dict: bool | None) -> ModelOutput | tuple:
        """`output`, or its tuple when `return_dict` (or the config's, when not given) is False."""
        as_dict = self.config.return_dict if return_dict is None else return_dict
        return output if as_dict else output.to_tuple()

    # --- checkpoint I/O -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | Checkpoint,
        *,
        config: PretrainedConfig | None = None,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        device_map: torch.device | str | None = None,
        attn_implementation: str | None = None,
        ignore_mismatched_sizes: bool = False,
        low_cpu_mem_usage: bool = True,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """Load a model from a checkpoint directory or a hub id (e.g. `google/siglip-base-patch16-224`).

        Reads `config.json` and `model.safetensors` (or a sharded index, or a legacy `pytorch_model.bin`
        opened without executing pickled code). A tower model also loads from a full `SiglipModel` checkpoint
        and from tower checkpoints with or without the `text_model.` / `vision_model.` prefix.

        Args:
            dtype / torch_dtype: weights dtype (`torch.float32` by default, "auto" for the checkpoint's own);
                each tensor is cast as it is read, so a change of dtype costs no second copy of the model.
            device: where to put the weights (they are read straight onto it). `device_map` is accepted as
                its alias when it names one device ("cuda:0"); spreading a model over devices is not done.
            attn_implementation: "sdpa" (default) or "eager".
            ignore_mismatched_sizes: re-initialise, with a warning, weights whose shape differs from the
                config (e.g. a classifier with another number of labels) instead of raising.
            low_cpu_mem_usage: accepted for transformers compatibility; loading is always low-memory (the
                model is built on the meta device and the weights are assigned into it).
            **kwargs: `revision`, `cache_dir`, `local_files_only` and `token` go to huggingface_hub for hub
                ids (`HubOptions`); the others override config values, e.g. `num_labels=10`; a name the config does not have
                is a `TypeError`, as in transformers.

        Missing, unexpected or mis-shaped weights raise a `CheckpointError` that lists them; only a head
        this class adds on top of a checkpoint (the classifier) is initialised when absent, with a warning.
        The model is returned in eval mode.
        """
        checkpoint = hub.locate(pretrained_model_name_or_path, hub.HubOptions.pop_from(kwargs))
        if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass one of them")
        dtype = dtype if dtype is not None else torch_dtype
        device = _single_device(device, device_map)
        if config is None:
            config = cls.config_class.from_pretrained(checkpoint)
        _override(config, kwargs)
        if attn_implementation is not None:
            config.attn_implementation = attn_implementation
        files = checkpoint.weight_files()
        if dtype == "auto":  # the config's dtype; without one, the weights' own (cast=None)
            cast = _as_dtype(config.torch_dtype) if config.torch_dtype else None
        else:
            cast = _as_dtype(dtype) if dtype is not None else torch.float32
        state_dict = weights.load_state_dict(files, device=device, dtype=cast)
        dtype = cast or next(v.dtype for v in state_dict.values() if v.is_floating_point())

        with torch.device("meta"):  # no memory and no init cost: every tensor is replaced below
            model = cls(config)
        matched = match_state_dict(
            {key: value.shape for key, value in model.state_dict().items()},
            state_dict,
            new_head_prefixes=cls._new_head_prefixes,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
            describe=f"'{checkpoint}' does not fit {cls.__name__} ({config.model_type} config)",
        )
        if matched.missing:  # materialise and initialise their modules; loaded siblings are assigned next
            logger.warning(
                "%s: weights not in checkpoint '%s' (or of another shape) start from a fresh initialisation; "
                "train them before use: %s",
                cls.__name__,
                checkpoint,
                ", ".join(matched.missing),
            )
            owners = [model.get_submodule(name) for name in owning_modules(matched.missing)]
            for module in owners:
                module.to_empty(device=device)
            model.init_weights(owners)
        model.load_state_dict(matched.tensors, strict=False, assign=True)
        model.to(dtype)
        model.config.torch_dtype = _as_dtype_name(dtype)
        return model.eval()

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        max_shard_size: int | str = "5GB",
        is_main_process: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        safe_serialization: bool = True,
    ) -> None:
        """Write `config.json` and `model.safetensors` (sharded with an index above `max_shard_size`).

        The files are written to a temporary folder first and moved into place only when complete; weight
        files of an earlier save that the new one does not overwrite are removed. transformers'
        `from_pretrained` reads the result. As in transformers, `is_main_process=False` writes nothing (for
        the other processes of a distributed run) and `state_dict` replaces the model's own tensors.
        Only safetensors are written: `safe_serialization=False` (pickles) is refused.
        """
        if not safe_serialization:
            raise ValueError(
                "siglip writes safetensors only; pickled pytorch_model.bin files are not written"
            )
        if not is_main_process:
            return
        self.config.architectures = [type(self).__name__]
        self.config.torch_dtype = _as_dtype_name(self.dtype)
        with staged_directory(save_directory, replaces=weights.WEIGHT_FILE_PATTERNS) as staging:
            self.config.to_json_file(staging / hub.CONFIG_NAME)
            weights.save_state_dict(
                self.state_dict() if state_dict is None else state_dict,
                staging,
                max_shard_size=max_shard_size,
            )


def _single_device(device: torch.device | str | None, device_map: Any) -> torch.device:
    """`device`, or transformers' `device_map` when it names a single device."""
    if device_map is not None:
        if device is not None:
            raise ValueError("pass device or device_map, not both")
        if not isinstance(device_map, str | torch.device | int) or device_map in (
            "auto",
            "balanced",
            "sequential",
        ):
            raise ValueError(
                f"device_map={device_map!r}: siglip puts a model on one device; pass device='cuda:0' (or 'cpu')"
            )
        device = device_map
    return torch.device(device) if device is not None else torch.device("cpu")


def _override(config: PretrainedConfig, overrides: dict[str, Any]) -> None:
    """Set config values given to `from_pretrained`; names the config does not have are a TypeError."""
    unknown = sorted(key for key in overrides if not hasattr(config, key))
    if unknown:
        raise TypeError(
            f"from_pretrained() got unexpected keyword arguments {unknown}: they are neither loading options "
            f"nor fields of {type(config).__name__}"
        )
    for key, value in overrides.items():
        setattr(config, key, value)


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return resolved


def _as_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
