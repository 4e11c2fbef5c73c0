"""The checkpoint half of every model class: construction from a config, `from_pretrained` and
`save_pretrained` in transformers' file format, and the switches transformers models share.

Loading reads the weight files memory-mapped (`weights.load_state_dict`), builds the model on the meta device (no
memory, no initialisation), maps the checkpoint's keys onto the model's (`state_dict.match_state_dict`, a pure
function) and assigns the tensors. The network itself lives in `modeling.py`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import CheckpointError
from . import hub, quantization, weights
from .config import PretrainedConfig
from .flash_attention import FLASH_ATTENTION_2, check_flash_attention
from .hub import Checkpoint
from .outputs import ModelOutput
from .push_to_hub import PushToHubMixin
from .staging import staged_directory
from .state_dict import match_state_dict, owning_modules

logger = logging.getLogger("siglip")


# `device_map` strings that ask accelerate to plan the placement; without accelerate they mean one device.
AUTO_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# Modules (by class-name ending) that accelerate must not split over devices: transformers' `_no_split_modules`.
_NO_SPLIT_ENDINGS = ("Embeddings", "EncoderLayer", "MultiheadAttentionPoolingHead")


class PreTrainedModel(PushToHubMixin, nn.Module):
    """Base class: construction from a config, `from_pretrained` / `save_pretrained` / `push_to_hub`, gradient
    checkpointing and what transformers' `Trainer` and PEFT use on a model."""

    config_class: ClassVar[type[PretrainedConfig]]
    main_input_name: ClassVar[str] = "pixel_values"
    supports_gradient_checkpointing: ClassVar[bool] = True
    _supports_flash_attn: ClassVar[bool] = True  # transformers': SigLIP yes, SigLIP 2 NaFlex no
    _keys_to_ignore_on_save: ClassVar[list[str] | None] = None
    # Parameter prefixes a checkpoint may lack; they are freshly initialised (with a warning) when absent.
    _new_head_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        if config.attn_implementation == FLASH_ATTENTION_2:
            check_flash_attention(type(self), self._supports_flash_attn)
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

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The number of parameters: only those that require grad with `only_trainable`, without the weights of
        the `nn.Embedding` tables (token and position embeddings) with `exclude_embeddings`, as transformers."""
        embeddings = {
            f"{name}.weight" for name, module in self.named_modules() if isinstance(module, nn.Embedding)
        }
        return sum(
            p.numel()
            for name, p in self.named_parameters()
            if (p.requires_grad or not only_trainable) and not (exclude_embeddings and name in embeddings)
        )

    # --- what transformers' Trainer and PEFT call --------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        """The module that embeds the inputs: token embeddings (text and two-tower models) or the patch
        embedding (vision models and classifiers), as in transformers."""
        raise NotImplementedError(f"{type(self).__name__} does not define get_input_embeddings")

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the module `get_input_embeddings` returns."""
        current = self.get_input_embeddings()
        for name, module in self.named_modules():
            if module is current:
                parent, _, child = name.rpartition(".")
                setattr(self.get_submodule(parent), child, value)
                return
        raise NotImplementedError(f"{type(self).__name__} cannot locate its input embeddings")

    def get_output_embeddings(self) -> None:
        """None: SigLIP has no language-model head (transformers' answer for these models)."""
        return None

    def tie_weights(self) -> None:
        """Nothing to tie: SigLIP shares no weights between its input and output layers."""

    def enable_input_require_grads(self) -> None:
        """Make the input embeddings' output require grad, so gradients reach the adapters of a frozen model
        (PEFT) and gradient checkpointing works with frozen embeddings. Undone by `disable_input_require_grads`."""
        self.disable_input_require_grads()
        self._require_grads_hooks = [
            self.get_input_embeddings().register_forward_hook(
                lambda module, args, output: output.requires_grad_(True)
            )
        ]

    def disable_input_require_grads(self) -> None:
        for hook in getattr(self, "_require_grads_hooks", []):
            hook.remove()
        self._require_grads_hooks = []

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        """Resize the token embedding table to `new_num_tokens` rows (rounded up to `pad_to_multiple_of`), keeping
        the existing rows; the config's text `vocab_size` follows. New rows are drawn, as in transformers, from a
        normal distribution with the old rows' mean and 1e-9 times their covariance (`mean_resizing`), else
        initialised as a model trained from scratch starts. With neither argument, the table is returned as is.
        """
        old = self.get_input_embeddings()
        if not isinstance(old, nn.Embedding):
            raise TypeError(f"{type(self).__name__} has no token embeddings to resize (its input is images)")
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int):
                raise ValueError(f"pad_to_multiple_of must be an integer, got {pad_to_multiple_of!r}")
            wanted = old.num_embeddings if new_num_tokens is None else new_num_tokens
            new_num_tokens = -(-wanted // pad_to_multiple_of) * pad_to_multiple_of
        if new_num_tokens is None or new_num_tokens == old.num_embeddings:
            return old
        new = type(old)(new_num_tokens, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        kept = min(old.num_embeddings, new_num_tokens)
        added = new_num_tokens - old.num_embeddings
        with torch.no_grad():
            if added > 0 and mean_resizing:
                new.weight[old.num_embeddings :] = _mean_resized_rows(old.weight, added)
            elif added > 0:
                self._init_weights(new)
            new.weight[:kept] = old.weight[:kept]
        new.requires_grad_(old.weight.requires_grad)
        self.set_input_embeddings(new)
        text_config = getattr(self.config, "text_config", self.config)
        text_config.vocab_size = new_num_tokens
        return new

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Recompute encoder layers in backward instead of storing their activations (training only), as
        transformers 5: every `every_n_layers`-th layer (counted over both towers), the saved layer inputs held
        in host memory with `offload`; `activation_checkpointing_kwargs` go to `torch.utils.checkpoint.checkpoint`
        (default `use_reentrant=False`)."""
        if every_n_layers < 1:
            raise ValueError(f"every_n_layers must be at least 1, got {every_n_layers}")
        kwargs = activation_checkpointing_kwargs or {"use_reentrant": False}
        function = functools.partial(_offloaded_checkpoint if offload else checkpoint, **kwargs)
        index = 0
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):  # the encoders
                module.gradient_checkpointing = True
                module.checkpoint_function = function
                module.checkpointed = [(index + i) % every_n_layers == 0 for i in range(len(module.layers))]
                index += len(module.layers)

    def activation_checkpointing_disable(self) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = False

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """transformers 4's name of `activation_checkpointing_enable` (same arguments)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

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
        device_map: str | int | torch.device | dict[str, Any] | None = None,
        max_memory: dict[int | str, int | str] | None = None,
        offload_folder: str | os.PathLike | None = None,
        attn_implementation: str | None = None,
        quantization_config: Any = None,
        ignore_mismatched_sizes: bool = False,
        low_cpu_mem_usage: bool = True,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """Load a model from a checkpoint directory or a hub id (e.g. `google/siglip-base-patch16-224`).

        Reads `config.json` and `model.safetensors` (or a sharded index, or a legacy `pytorch_model.bin`
        opened without executing pickled code). A tower model also loads from a full `SiglipModel` checkpoint
        and from tower checkpoints with or without the `text_model.` / `vision_model.` prefix.

        Args:
            dtype / torch_dtype: weights dtype (`torch.float32` by default, "auto" for the checkpoint's own: the
                config's `dtype` / `torch_dtype`, else the weights'); each tensor is cast as it is read, so a
                change of dtype costs no second copy of the model.
            device: where to put the weights (they are read straight onto it).
            device_map: transformers' argument. One device ("cpu", "cuda", "cuda:1", "mps", an int GPU index, a
                `torch.device`, `{"": device}`) puts the whole model there; "auto" (and "balanced",
                "sequential", "balanced_low_0") means the first GPU, else Apple's MPS, else the CPU. A map over
                several devices (or "auto" with `max_memory`) needs the `accelerate` package and is then planned
                and dispatched as transformers does (`_no_split_modules`, `max_memory`, `offload_folder`).
            attn_implementation: "sdpa" (default), "eager" or "flash_attention_2" (needs the flash_attn package
                and a CUDA GPU; SigLIP 2 NaFlex models do not support it, as in transformers).
            quantization_config: a `BitsAndBytesConfig` (ours or transformers'): 8- or 4-bit Linear layers
                through bitsandbytes (see `siglip.core.quantization`); half precision by default.
            ignore_mismatched_sizes: re-initialise, with a warning, weights whose shape differs from the
                config (e.g. a classifier with another number of labels) instead of raising.
            low_cpu_mem_usage: accepted for transformers compatibility; loading is always low-memory (the
                model is built on the meta device and the weights are assigned into it).
            **kwargs: `revision`, `cache_dir`, `local_files_only` and `token` go to huggingface_hub for hub
                ids (`HubOptions`; `trust_remote_code` is accepted and ignored: siglip runs no checkpoint code);
                the others override config values, e.g. `num_labels=10`; a name the config does not have is a
                `TypeError`, as in transformers.

        Missing, unexpected or mis-shaped weights raise a `CheckpointError` that lists them; only a head
        this class adds on top of a checkpoint (the classifier) is initialised when absent, with a warning.
        The model is returned in eval mode.
        """
        checkpoint = hub.locate(pretrained_model_name_or_path, hub.HubOptions.pop_from(kwargs))
        if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass one of them")
        dtype = dtype if dtype is not None else torch_dtype
        placement = device_placement(device, device_map, max_memory)
        quantize = quantization.as_bitsandbytes_config(quantization_config) if quantization_config else None
        if quantize is not None:
            dtype = torch.float16 if dtype is None else dtype  # transformers' defaults for bitsandbytes:
            if device is None and device_map is None:  # half precision, on the current GPU if there is one
                placement = quantization.default_device()
        if config is None:
            config = cls.config_class.from_pretrained(checkpoint)
        _override(config, kwargs)
        if attn_implementation is not None:
            config.attn_implementation = attn_implementation
        device = placement if isinstance(placement, torch.device) else torch.device("cpu")
        if quantize is not None:
            device = torch.device("cpu")  # quantized on the move to the target device, below
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
            if cls._new_head_prefixes and all(
                key.startswith(cls._new_head_prefixes) for key in matched.missing
            ):
                # then the class's own rule for its new head, as transformers runs it (same random draws)
                model._init_weights(model)
        model.load_state_dict(matched.tensors, strict=False, assign=True)
        model.to(dtype)
        model.config.torch_dtype = _as_dtype_name(dtype)
        if quantize is not None:
            model._quantize(quantize, placement)
        elif not isinstance(placement, torch.device):
            model._dispatch(placement, max_memory, offload_folder)
        elif device_map is not None:
            model.hf_device_map = {"": placement}
        return model.eval()

    def _quantize(self, config: quantization.BitsAndBytesConfig, placement: torch.device | Any) -> None:
        """Replace the Linear layers by bitsandbytes' and quantize them on the way to their device."""
        if not isinstance(placement, torch.device):
            raise ValueError("siglip quantizes a model on one device; pass device_map='auto' or one device")
        quantization.replace_linear_layers(self, config)
        self.to(placement)
        self.is_quantized = True
        self.quantization_method = config.quant_method
        self.is_loaded_in_8bit = config.load_in_8bit
        self.is_loaded_in_4bit = config.load_in_4bit
        self.config.quantization_config = config.to_dict()

    def _dispatch(
        self, device_map: str | dict[str, Any], max_memory: dict | None, offload_folder: Any
    ) -> None:
        """Spread the model over devices with accelerate, as transformers does: plan a map for "auto" and the
        like (keeping `_no_split_modules` whole), then `dispatch_model` when it names more than one device."""
        from accelerate import dispatch_model, infer_auto_device_map
        from accelerate.utils import get_balanced_memory, get_max_memory

        if isinstance(device_map, str):
            if device_map == "sequential":
                max_memory = get_max_memory(max_memory)
            else:
                max_memory = get_balanced_memory(
                    self, max_memory=max_memory, no_split_module_classes=self._no_split_modules,
                    low_zero=device_map == "balanced_low_0",
                )  # fmt: skip
            device_map = infer_auto_device_map(
                self, max_memory=max_memory, no_split_module_classes=self._no_split_modules
            )
        devices = set(device_map.values())
        if len(devices) > 1 or "disk" in devices:
            dispatch_model(self, device_map=device_map, offload_dir=offload_folder)
        else:
            self.to(_as_device(devices.pop()))
        self.hf_device_map = dict(device_map)

    @property
    def _no_split_modules(self) -> list[str]:
        """Class names of the modules accelerate keeps on one device: the embeddings, the encoder layers and the
        attention-pooling head (transformers' list for SigLIP)."""
        return sorted(
            {type(m).__name__ for m in self.modules() if type(m).__name__.endswith(_NO_SPLIT_ENDINGS)}
        )

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
        if state_dict is None:
            state_dict = self.state_dict()
            unsaved = _not_a_checkpoint(self, state_dict)
            if unsaved:
                raise CheckpointError(f"Cannot save {type(self).__name__} as a checkpoint: {unsaved}")
        self.config.architectures = [type(self).__name__]
        self.config.torch_dtype = _as_dtype_name(self.dtype)
        with staged_directory(save_directory, replaces=weights.WEIGHT_FILE_PATTERNS) as staging:
            self.config.to_json_file(staging / hub.CONFIG_NAME)
            weights.save_state_dict(state_dict, staging, max_shard_size=max_shard_size)


def _not_a_checkpoint(model: nn.Module, state_dict: dict[str, Any]) -> str | None:
    """Why `model`'s own `state_dict` is not a checkpoint of its format, or None: a module that says so in
    `not_a_checkpoint` (the layers of siglip's int8 inference mode), or a value that is not a tensor (the
    packed parameters of torch's quantised layers)."""
    for name, module in model.named_modules():
        why = getattr(module, "not_a_checkpoint", None)
        if why:
            return f"{name} is {why}"
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            return f"{key} is a {type(value).__name__}, not a tensor (a quantised layer's packed parameters?)"
    return None


def device_placement(
    device: torch.device | str | None, device_map: Any, max_memory: dict | None = None
) -> torch.device | str | dict[str, Any]:
    """Where `from_pretrained` puts a model: one `torch.device`, or a `device_map` for accelerate (a plan name
    like "auto", or a map over several devices), which needs the accelerate package.

    `device_map` takes transformers' values (see `PreTrainedModel.from_pretrained`); `device` is siglip's own
    name for one device. "cuda" means the GPU of this process's LOCAL_RANK, as in transformers.
    """
    if device_map is None:
        return torch.device(device) if device is not None else torch.device("cpu")
    if device is not None:
        raise ValueError("pass device or device_map, not both")
    if isinstance(device_map, str) and device_map in AUTO_DEVICE_MAPS:
        if _has_accelerate() and (max_memory is not None or torch.cuda.device_count() > 1):
            return device_map
        return _best_device()
    if isinstance(device_map, dict):
        devices = {_as_device(value) for value in device_map.values() if value != "disk"}
        if len(devices) == 1 and "disk" not in device_map.values():
            return devices.pop()
        if not _has_accelerate():
            raise ValueError(
                f"device_map={device_map!r} spreads the model over several devices, which needs accelerate: "
                "`pip install accelerate`, or pass one device (e.g. device_map='cuda:0')"
            )
        return device_map
    return _as_device(device_map)


def _as_device(value: Any) -> torch.device:
    """A `device_map` value as a `torch.device`: an int is a GPU index, "cuda" the LOCAL_RANK's GPU."""
    if isinstance(value, bool):
        raise ValueError(f"device_map={value!r} is not a device")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(
                "You can't pass device_map as a negative int. If you want to put the model on the cpu, pass "
                "device_map = 'cpu'"
            )
        return torch.device("cuda", value)
    if value == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    try:
        return torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(
            "When passing device_map as a string, the value needs to be a device name (e.g. cpu, cuda:0) or "
            f"'auto', 'balanced', 'balanced_low_0', 'sequential' but found {value}."
        ) from None


def _best_device() -> torch.device:
    """What "auto" means on one device: the first CUDA GPU, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _has_accelerate() -> bool:
    return importlib.util.find_spec("accelerate") is not None


def _offloaded_checkpoint(function: Any, *args: Any, **kwargs: Any) -> Any:
    """`checkpoint` with the saved layer inputs in (pinned, when there is a GPU) host memory."""
    with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
        return checkpoint(function, *args, **kwargs)


def _mean_resized_rows(old: torch.Tensor, added: int) -> torch.Tensor:
    """`added` new embedding rows as transformers' `mean_resizing` draws them: from a normal distribution with
    the old rows' mean and 1e-9 times their covariance (the mean itself when that is not positive definite)."""
    rows = old.detach().float()
    mean = rows.mean(dim=0)
    centered = rows - mean
    covariance = 1e-9 * (centered.T @ centered) / rows.shape[0]
    if torch.distributions.constraints.positive_definite.check(covariance).all():
        normal = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance)
        return normal.sample((added,)).to(old.dtype)
    return mean[None].repeat(added, 1).to(old.dtype)


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
