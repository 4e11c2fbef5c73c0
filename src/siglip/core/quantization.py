"""`from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`: 8-bit (LLM.int8) or 4-bit (FP4 / NF4)
weights through the `bitsandbytes` package, as transformers loads them.

    from siglip import AutoModel, BitsAndBytesConfig
    model = AutoModel.from_pretrained("google/siglip-so400m-patch14-384",
                                      quantization_config=BitsAndBytesConfig(load_in_4bit=True))

Every `nn.Linear` (of exactly that class, so not the output projection inside `nn.MultiheadAttention`, which
reads its weight directly) becomes bitsandbytes' `Linear8bitLt` / `Linear4bit`, except the module of the model's
last parameter and `llm_int8_skip_modules`, as transformers chooses them; the weights are quantized when the
model moves to its device (the first CUDA GPU, else the CPU, which recent bitsandbytes releases support).
Without the package, loading fails with one line naming it: never a silent fallback to full precision.
transformers' own `BitsAndBytesConfig` is accepted too.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class BitsAndBytesConfig:
    """transformers' `BitsAndBytesConfig`: its arguments and defaults (see bitsandbytes for their meaning)."""

    load_in_8bit: bool = False
    load_in_4bit: bool = False
    llm_int8_threshold: float = 6.0
    llm_int8_skip_modules: list[str] | None = None
    llm_int8_enable_fp32_cpu_offload: bool = False
    llm_int8_has_fp16_weight: bool = False
    bnb_4bit_compute_dtype: torch.dtype | str | None = None
    bnb_4bit_quant_type: str = "fp4"
    bnb_4bit_use_double_quant: bool = False
    bnb_4bit_quant_storage: torch.dtype | str | None = None
    quant_method: str = "bitsandbytes"

    def __post_init__(self) -> None:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError(
                "load_in_4bit and load_in_8bit are both True, but only one can be used at the same time"
            )
        if self.bnb_4bit_quant_type not in ("fp4", "nf4"):
            raise ValueError(f"bnb_4bit_quant_type must be 'fp4' or 'nf4', got {self.bnb_4bit_quant_type!r}")
        self.bnb_4bit_compute_dtype = _dtype(self.bnb_4bit_compute_dtype, torch.float32)
        self.bnb_4bit_quant_storage = _dtype(self.bnb_4bit_quant_storage, torch.uint8)

    def quantization_method(self) -> str:
        """ "llm_int8", "fp4" or "nf4" (transformers' name for the scheme)."""
        return "llm_int8" if self.load_in_8bit else self.bnb_4bit_quant_type

    def to_dict(self) -> dict[str, Any]:
        """The settings as `config.json`'s `quantization_config` records them."""
        return {
            k: str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else v
            for k, v in asdict(self).items()
        }


def _dtype(value: torch.dtype | str | None, default: torch.dtype) -> torch.dtype:
    if value is None:
        return default
    resolved = getattr(torch, value, None) if isinstance(value, str) else value
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"{value!r} is not a torch dtype")
    return resolved


def as_bitsandbytes_config(config: Any) -> BitsAndBytesConfig:
    """Ours from a `quantization_config` argument: ours, transformers' `BitsAndBytesConfig` or its dictionary.

    Other quantization methods, a config that quantizes nothing, or no `bitsandbytes` package raise one line.
    """
    if isinstance(config, BitsAndBytesConfig):
        settings = asdict(config)
    else:
        settings = dict(config) if isinstance(config, dict) else config.to_dict()
    method = settings.get("quant_method", "bitsandbytes")
    method = str(getattr(method, "value", method))  # transformers' QuantizationMethod is an Enum
    if method != "bitsandbytes":
        raise ValueError(
            f"quantization_config with quant_method={method!r}: siglip quantizes with bitsandbytes only"
        )
    known = BitsAndBytesConfig.__dataclass_fields__
    settings = {k.removeprefix("_"): v for k, v in settings.items() if k.removeprefix("_") in known}
    ours = BitsAndBytesConfig(**settings)
    if not (ours.load_in_8bit or ours.load_in_4bit):
        raise ValueError("quantization_config quantizes nothing: set load_in_8bit=True or load_in_4bit=True")
    if importlib.util.find_spec("bitsandbytes") is None:
        bits = 8 if ours.load_in_8bit else 4
        raise ImportError(
            f"Using `bitsandbytes` {bits}-bit quantization requires bitsandbytes: `pip install -U bitsandbytes`"
        )
    return ours


def default_device() -> torch.device:
    """Where a quantized model goes when no device is named: the current CUDA GPU, else the CPU."""
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def modules_to_keep(model: nn.Module, config: BitsAndBytesConfig) -> list[str]:
    """Module names left in full precision: `llm_int8_skip_modules`, else the module of the last parameter."""
    if config.llm_int8_skip_modules is not None:
        return list(config.llm_int8_skip_modules)
    last = list(model.named_parameters())[-1][0]
    return [last.rsplit(".", 1)[0]]


def replace_linear_layers(model: nn.Module, config: BitsAndBytesConfig) -> list[str]:
    """Swap each `nn.Linear` not kept (`modules_to_keep`) for bitsandbytes' layer holding the same weights, not yet
    quantized (that happens on `.to(device)`). Returns the names of the replaced modules."""
    import bitsandbytes as bnb

    keep = modules_to_keep(model, config)
    replaced = []
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or any(name == k or name.endswith("." + k) for k in keep):
            continue
        bias = module.bias is not None
        if config.load_in_8bit:
            new = bnb.nn.Linear8bitLt(
                module.in_features, module.out_features, bias,
                has_fp16_weights=config.llm_int8_has_fp16_weight, threshold=config.llm_int8_threshold,
            )  # fmt: skip
            new.weight = bnb.nn.Int8Params(
                module.weight.data, requires_grad=False, has_fp16_weights=config.llm_int8_has_fp16_weight
            )
        else:
            new = bnb.nn.Linear4bit(
                module.in_features, module.out_features, bias, config.bnb_4bit_compute_dtype,
                compress_statistics=config.bnb_4bit_use_double_quant, quant_type=config.bnb_4bit_quant_type,
                quant_storage=config.bnb_4bit_quant_storage,
            )  # fmt: skip
            new.weight = bnb.nn.Params4bit(
                module.weight.data, requires_grad=False, compress_statistics=config.bnb_4bit_use_double_quant,
                quant_type=config.bnb_4bit_quant_type, quant_storage=config.bnb_4bit_quant_storage,
            )  # fmt: skip
        if bias:
            new.bias = nn.Parameter(module.bias.data, requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
        replaced.append(name)
    return replaced
