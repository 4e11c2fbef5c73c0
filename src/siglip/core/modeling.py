"""SigLIP models: the two towers, the two-tower model and an image classifier.

The modules and parameter names follow transformers 4.x exactly (`text_model.*`, `vision_model.*`,
`logit_scale`, `logit_bias`, `classifier.*`), so checkpoint files move between the two libraries unchanged.

Pixels to pooled image vector, top to bottom:
    patch conv -> + position embeddings -> pre-LN transformer encoder -> post LayerNorm -> attention pooling
Tokens to pooled text vector:
    token + position embeddings -> pre-LN transformer encoder -> final LayerNorm -> last position -> linear head
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import hub
from .configuration import PretrainedConfig, SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from .loss import sigmoid_loss

logger = logging.getLogger("siglip")


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh-approximated GELU: every released SigLIP uses it (big_vision's nn.gelu)."""
    return F.gelu(x, approximate="tanh")


# Plain functions, not partials: copy.deepcopy keeps them, so `activation is ACTIVATIONS[...]` stays true.
ACTIVATIONS = {"gelu_pytorch_tanh": gelu_tanh, "gelu": F.gelu}


# --------------------------------------------------------------------------------------------------------
# Outputs: dataclasses that also index like transformers' ModelOutput (by name, by position, to_tuple()).
# --------------------------------------------------------------------------------------------------------
class ModelOutput:
    """Base of the output dataclasses. Fields that are None are skipped when indexing by position."""

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-None fields in order; nested outputs become tuples too."""
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    """A tower's output.

    `last_hidden_state` (B, N, D) is after the final LayerNorm; `pooler_output` is the pooled vector (B, D')
    (None for a vision tower without head); `hidden_states` are the embedding output and every layer's output
    (L + 1 tensors, the last before the final LayerNorm); `attentions` are L maps (B, heads, N, N).
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class SiglipOutput(ModelOutput):
    """`SiglipModel` output. `logits_per_image` (images, texts) = `logits_per_text.T`; probabilities are
    `torch.sigmoid(logits_per_image)` (not softmax). `text_embeds`/`image_embeds` are L2-normalised."""

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None


@dataclass
class ImageClassifierOutput(ModelOutput):
    """`SiglipForImageClassification` output: `logits` (B, num_labels) and the loss when labels are given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# --------------------------------------------------------------------------------------------------------
# Building blocks shared by both towers
# --------------------------------------------------------------------------------------------------------
class SiglipAttention(nn.Module):
    """Multi-head self-attention. Never causal; an additive key mask is optional (text padding only)."""

    def __init__(self, config: SiglipTextConfig | SiglipVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim**-0.5
        # Declared in transformers' order so state_dict() lists keys identically.
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = x.shape
        q, k, v = (
            proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        dropout = self.config.attention_dropout if self.training else 0.0
        weights = None
        if output_attentions or self.config.attn_implementation == "eager":
            # The explicit path: the only one that can return the attention maps. Softmax in float32.
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            if attention_mask is not None:
                scores = scores + attention_mask
            weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(F.dropout(weights, p=dropout, training=self.training), v)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attention_mask, dropout_p=dropout, scale=self.scale
            )
        out = out.transpose(1, 2).reshape(batch, length, self.embed_dim)
        return self.out_proj(out), (weights if output_attentions else None)


class SiglipMLP(nn.Module):
    def __init__(self, config: SiglipTextConfig | SiglipVisionConfig) -> None:
        super().__init__()
        if config.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act {config.hidden_act!r} is not supported; use one of {list(ACTIVATIONS)}"
            )
        self.activation = ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x)). No dropout, no layer scale."""

    def __init__(self, config: SiglipTextConfig | SiglipVisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SiglipAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, weights = self.self_attn(self.layer_norm1(x), attention_mask, output_attentions)
        x = x + attn_out
        x = x + self.mlp(self.layer_norm2(x))
        return x, weights


class SiglipEncoder(nn.Module):
    def __init__(self, config: SiglipTextConfig | SiglipVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        hidden_states = (x,) if output_hidden_states else None
        attentions = () if output_attentions else None
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:  # keep only each layer's input; recompute its inside in backward
                x, weights = checkpoint(layer, x, attention_mask, output_attentions, use_reentrant=False)
            else:
                x, weights = layer(x, attention_mask, output_attentions)
            if output_hidden_states:
                hidden_states += (x,)
            if output_attentions:
                attentions += (weights,)
        return x, hidden_states, attentions


# --------------------------------------------------------------------------------------------------------
# Text tower
# --------------------------------------------------------------------------------------------------------
class SiglipTextEmbeddings(nn.Module):
    def __init__(self, config: SiglipTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        length, max_length = input_ids.shape[-1], self.position_embedding.num_embeddings
        if length > max_length:
            raise ValueError(
                f"input_ids have {length} tokens but this text model has {max_length} positions; tokenize with "
                f"padding='max_length', truncation=True, max_length={max_length}"
            )
        if position_ids is None:
            position_ids = torch.arange(length, device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


def _key_padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, T) with 1 = keep -> additive (B, 1, 1, T) mask on the keys, or None when nothing is masked."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    blocked = (attention_mask == 0)[:, None, None, :]
    return torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill(
        blocked, torch.finfo(dtype).min
    )


class SiglipTextTransformer(nn.Module):
    def __init__(self, config: SiglipTextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = SiglipTextEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_size, config.projection_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        if input_ids is None:
            raise ValueError("input_ids are required")
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        x = self.embeddings(input_ids, position_ids)
        mask = _key_padding_mask(attention_mask, x.dtype)
        x, hidden_states, attentions = self.encoder(x, mask, output_attentions, output_hidden_states)
        x = self.final_layer_norm(x)
        # Pool the last position: with SigLIP's fixed-length padding (pad == eos) it is always an EOS token.
        pooled = self.head(x[:, -1, :])
        return BaseModelOutputWithPooling(x, pooled, hidden_states, attentions)


# --------------------------------------------------------------------------------------------------------
# Vision tower
# --------------------------------------------------------------------------------------------------------
class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.num_positions = (config.image_size // config.patch_size) ** 2
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)

    def position_grid(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a (height x width) pixel input: the learned square grid resized bicubically.

        At the trained resolution this is the table itself; otherwise (any size, non-square included) the
        grid is interpolated (align_corners=False, no antialias, in the weight dtype, as transformers does).
        """
        table = self.position_embedding.weight
        rows, cols = height // self.patch_size, width // self.patch_size
        if rows * cols == self.num_positions and rows == cols and not torch.jit.is_tracing():
            return table
        side = math.isqrt(self.num_positions)
        grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(rows * cols, -1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[-2:]
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        x = patches.flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major order
        if interpolate_pos_encoding:
            return x + self.position_grid(height, width)
        if x.shape[1] != self.num_positions:
            raise ValueError(
                f"pixel_values of {height}x{width} give {x.shape[1]} patches but the model has "
                f"{self.num_positions} position embeddings; resize the images to the model's image_size or "
                "pass interpolate_pos_encoding=True"
            )
        return x + self.position_embedding.weight


class SiglipMultiheadAttentionPoolingHead(nn.Module):
    """MAP head: a learned probe attends over the patch tokens, then a residual MLP; returns (B, D)."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, config.hidden_size))
        # nn.MultiheadAttention (not a re-implementation) so eval-mode numbers match transformers bit for bit.
        self.attention = nn.MultiheadAttention(
            config.hidden_size, config.num_attention_heads, batch_first=True
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1)
        pooled = self.attention(probe, x, x)[0]
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]


class SiglipVisionTransformer(nn.Module):
    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = SiglipMultiheadAttentionPoolingHead(config) if config.vision_use_head else None

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> BaseModelOutputWithPooling:
        if pixel_values is None:
            raise ValueError("pixel_values are required")
        x = self.embeddings(pixel_values, interpolate_pos_encoding)
        x, hidden_states, attentions = self.encoder(x, None, output_attentions, output_hidden_states)
        x = self.post_layernorm(x)
        pooled = self.head(x) if self.head is not None else None
        return BaseModelOutputWithPooling(x, pooled, hidden_states, attentions)


# --------------------------------------------------------------------------------------------------------
# Weight initialisation (training from scratch and freshly added heads)
# --------------------------------------------------------------------------------------------------------
def _lecun_normal_(weight: torch.Tensor) -> None:
    """Truncated normal (2 std), variance 1 / fan_in: jax's lecun_normal."""
    fan_in = nn.init._calculate_fan_in_and_fan_out(weight)[0]
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of a unit normal truncated at +-2
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def _init_module(module: nn.Module, config: PretrainedConfig) -> None:
    """Initialise one module's own parameters as big_vision / transformers do (children come first)."""
    if isinstance(module, nn.Embedding):  # token and position tables alike: normal, std 1 / sqrt(width)
        nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
    elif isinstance(module, SiglipAttention):
        for proj in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)
    elif isinstance(module, SiglipMLP):
        for fc in (module.fc1, module.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)
    elif isinstance(module, SiglipMultiheadAttentionPoolingHead):
        nn.init.xavier_uniform_(module.probe)
        nn.init.xavier_uniform_(module.attention.in_proj_weight)
        nn.init.zeros_(module.attention.in_proj_bias)
    elif isinstance(module, SiglipModel):
        # big_vision's starting temperature 10 and bias -10 (transformers starts both at 0, which makes the
        # first steps of from-scratch training fight N - 1 negatives per positive).
        nn.init.constant_(module.logit_scale, math.log(10.0))
        nn.init.constant_(module.logit_bias, -10.0)
    elif isinstance(module, SiglipForImageClassification) and isinstance(module.classifier, nn.Linear):
        std = config.vision_config.hidden_size**-0.5 * config.initializer_factor
        nn.init.normal_(module.classifier.weight, std=std)
        nn.init.zeros_(module.classifier.bias)
    elif isinstance(module, (nn.Linear, nn.Conv2d)):
        _lecun_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------------------
# Public models
# --------------------------------------------------------------------------------------------------------
class SiglipPreTrainedModel(nn.Module):
    """Base class: construction from a config, `from_pretrained` / `save_pretrained`, gradient checkpointing."""

    config_class: ClassVar[type[PretrainedConfig]] = SiglipConfig
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
            module.apply(lambda m: _init_module(m, self.config))

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
        for module in self.modules():
            if isinstance(module, SiglipEncoder):
                module.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if isinstance(module, SiglipEncoder):
                module.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    # --- checkpoint I/O -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        config: PretrainedConfig | None = None,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        device_map: torch.device | str | None = None,
        attn_implementation: str | None = None,
        ignore_mismatched_sizes: bool = False,
        low_cpu_mem_usage: bool = True,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        **config_kwargs: Any,
    ) -> SiglipPreTrainedModel:
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
            revision, cache_dir, local_files_only, token: passed to huggingface_hub for hub ids.
            **config_kwargs: override config values, e.g. `num_labels=10`; a name the config does not have
                is a `TypeError`, as in transformers.

        Missing, unexpected or mis-shaped weights raise a `CheckpointError` that lists them; only a head
        this class adds on top of a checkpoint (the classifier) is initialised when absent, with a warning.
        The model is returned in eval mode.
        """
        hub_kwargs = dict(
            revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
        if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass one of them")
        dtype = dtype if dtype is not None else torch_dtype
        device = _single_device(device, device_map)
        if config is None:
            config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        _override(config, config_kwargs)
        if attn_implementation is not None:
            config.attn_implementation = attn_implementation
        files = hub.resolve_weight_files(pretrained_model_name_or_path, **hub_kwargs)
        if dtype == "auto":  # the config's dtype; without one, the weights' own (cast=None)
            cast = _as_dtype(config.torch_dtype) if config.torch_dtype else None
        else:
            cast = _as_dtype(dtype) if dtype is not None else torch.float32
        state_dict = hub.load_state_dict(files, device=device, dtype=cast)
        dtype = cast or next(v.dtype for v in state_dict.values() if v.is_floating_point())

        with _empty_construction():  # no memory and no init cost: every tensor is replaced below
            model = cls(config)
        state_dict, to_initialise = _match_state_dict(
            model, state_dict, ignore_mismatched_sizes, source=str(pretrained_model_name_or_path)
        )
        if to_initialise:  # materialise and initialise their modules; loaded siblings are assigned next
            owners = _owning_modules(model, to_initialise)
            for module in owners:
                module.to_empty(device=device)
            model.init_weights(owners)
        model.load_state_dict(state_dict, strict=False, assign=True)
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
        with hub.staged_directory(save_directory, replaces=hub.WEIGHT_FILE_PATTERNS) as staging:
            self.config.to_json_file(staging / hub.CONFIG_NAME)
            hub.save_state_dict(
                self.state_dict() if state_dict is None else state_dict,
                staging,
                max_shard_size=max_shard_size,
            )


@contextlib.contextmanager
def _empty_construction() -> Iterator[None]:
    """Build modules on the meta device with torch's default initialisers switched off.

    Initialisers on meta tensors are not free: the first one imports torch._dynamo (about 2 s). The switch
    is process-wide while the model is built (as transformers' `no_init_weights`): another thread
    initialising modules at that moment would get uninitialised weights.
    """
    names = (
        "uniform_",
        "normal_",
        "trunc_normal_",
        "constant_",
        "ones_",
        "zeros_",
        "xavier_uniform_",
        "kaiming_uniform_",
    )
    saved = {name: getattr(nn.init, name) for name in names}
    try:
        for name in names:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        with torch.device("meta"):
            yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


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


def _match_state_dict(
    model: SiglipPreTrainedModel,
    state_dict: dict[str, torch.Tensor],
    ignore_mismatched_sizes: bool,
    source: str,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map checkpoint keys onto the model's and check them; returns the matched weights and keys to initialise.

    Accepted differences: a tower checkpoint saved without its `text_model.` / `vision_model.` prefix
    (transformers 5), a full SigLIP checkpoint loaded into one tower (the other tower and the logit
    parameters are ignored), stale `position_ids` buffers. Anything else missing, unexpected or mis-shaped is
    an error that lists the keys.
    """
    expected = model.state_dict()  # meta tensors: names and shapes only
    towers = {
        name.split(".")[0] + "." for name in expected if name.startswith(("text_model.", "vision_model."))
    }
    ignorable = {"text_model.", "vision_model.", "logit_scale", "logit_bias"} - towers
    if "classifier.weight" not in expected:  # a tower loaded from a SiglipForImageClassification checkpoint
        ignorable.add("classifier.")
    ignorable = tuple(ignorable)
    matched: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: dict[str, str] = {}
    for key, tensor in state_dict.items():
        name = key
        if name not in expected and len(towers) == 1:
            name = next(iter(towers)) + key  # an un-prefixed tower checkpoint
        if name not in expected:
            if not key.startswith(ignorable) and not key.endswith("position_ids"):
                unexpected.append(key)
        elif tensor.shape != expected[name].shape:
            mismatched[name] = f"{key}: checkpoint {tuple(tensor.shape)}, model {tuple(expected[name].shape)}"
        else:
            matched[name] = tensor
    missing = [k for k in expected if k not in matched]
    allowed = {k for k in missing if k.startswith(model._new_head_prefixes)}
    if ignore_mismatched_sizes:
        allowed |= set(mismatched)
    problems = []
    if mismatched and not ignore_mismatched_sizes:
        problems.append(
            "mis-shaped weights (pass ignore_mismatched_sizes=True to re-initialise them):\n  "
            + "\n  ".join(mismatched.values())
        )
    if unexpected:
        problems.append("unexpected weights:\n  " + "\n  ".join(unexpected))
    if hard_missing := [k for k in missing if k not in allowed and k not in mismatched]:
        problems.append("missing weights:\n  " + "\n  ".join(hard_missing))
    if problems:
        raise hub.CheckpointError(
            f"Checkpoint '{source}' does not fit {type(model).__name__} ({model.config.model_type} config):\n"
            + "\n".join(problems)
        )
    if missing:
        logger.warning(
            "%s: weights not in checkpoint '%s' (or of another shape) start from a fresh initialisation; "
            "train them before use: %s",
            type(model).__name__,
            source,
            ", ".join(missing),
        )
    return matched, missing


def _owning_modules(model: nn.Module, keys: list[str]) -> list[nn.Module]:
    """The modules that directly own the given parameters."""
    names = {key.rsplit(".", 1)[0] if "." in key else "" for key in keys}
    return [model.get_submodule(name) for name in sorted(names)]


class SiglipTextModel(SiglipPreTrainedModel):
    """The SigLIP text tower. `pooler_output` is the text head's output at the last position (unnormalised).

    Tokenize with `padding="max_length"` (the models were trained on fixed-length, EOS-padded text).
    """

    config_class = SiglipTextConfig
    main_input_name = "input_ids"

    def __init__(self, config: SiglipTextConfig) -> None:
        super().__init__(config)
        self.text_model = SiglipTextTransformer(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.embeddings.token_embedding = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        out = self.text_model(
            input_ids,
            attention_mask,
            position_ids,
            _flag(output_attentions, self.config.output_attentions),
            _flag(output_hidden_states, self.config.output_hidden_states),
        )
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()


class SiglipVisionModel(SiglipPreTrainedModel):
    """The SigLIP vision tower. `pooler_output` is the attention-pooled image vector (unnormalised)."""

    config_class = SiglipVisionConfig

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__(config)
        self.vision_model = SiglipVisionTransformer(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> BaseModelOutputWithPooling | tuple:
        out = self.vision_model(
            pixel_values,
            _flag(output_attentions, self.config.output_attentions),
            _flag(output_hidden_states, self.config.output_hidden_states),
            interpolate_pos_encoding,
        )
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()


def _flag(value: bool | None, default: bool) -> bool:
    return default if value is None else value


class SiglipModel(SiglipPreTrainedModel):
    """Both towers plus the learned `logit_scale` (log temperature) and `logit_bias`.

    `logits_per_text = exp(logit_scale) * cos(text, image) + logit_bias`; probabilities are
    `sigmoid(logits_per_image)`. With `return_loss=True` the sigmoid loss of the (square) batch is returned.
    """

    config_class = SiglipConfig
    main_input_name = "input_ids"

    def __init__(self, config: SiglipConfig) -> None:
        super().__init__(config)
        self.text_model = SiglipTextTransformer(config.text_config)
        self.vision_model = SiglipVisionTransformer(config.vision_config)
        self.logit_scale = nn.Parameter(torch.empty(1))
        self.logit_bias = nn.Parameter(torch.empty(1))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.token_embedding

    def get_text_features(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> torch.Tensor:
        """Text embeddings (B, projection_size): the text head's output, not normalised.

        The output flags are accepted for transformers compatibility; only the pooled tensor is returned.
        """
        return self.text_model(input_ids, attention_mask, position_ids).pooler_output

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """Image embeddings (B, D): the attention-pooled vision output, not normalised."""
        return self._image_pooled(
            self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        )

    def _image_pooled(self, vision_output: BaseModelOutputWithPooling) -> torch.Tensor:
        if vision_output.pooler_output is None:
            raise ValueError(
                "this vision tower has no pooling head (vision_use_head=False), so it gives no image embedding; "
                "use SiglipVisionModel and its last_hidden_state"
            )
        return vision_output.pooler_output

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> SiglipOutput | tuple:
        if input_ids is None or pixel_values is None:
            raise ValueError(
                "SiglipModel.forward needs both input_ids and pixel_values; for one modality use "
                "get_text_features / get_image_features"
            )
        output_attentions = _flag(output_attentions, self.config.output_attentions)
        output_hidden_states = _flag(output_hidden_states, self.config.output_hidden_states)
        vision_out = self.vision_model(
            pixel_values, output_attentions, output_hidden_states, interpolate_pos_encoding
        )
        text_out = self.text_model(
            input_ids, attention_mask, position_ids, output_attentions, output_hidden_states
        )
        image_embeds = self._image_pooled(vision_out)
        image_embeds = image_embeds / image_embeds.norm(p=2, dim=-1, keepdim=True)  # no eps, as the reference
        text_embeds = text_out.pooler_output
        text_embeds = text_embeds / text_embeds.norm(p=2, dim=-1, keepdim=True)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp() + self.logit_bias
        out = SiglipOutput(
            loss=sigmoid_loss(logits_per_text) if return_loss else None,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_out,
            vision_model_output=vision_out,
        )
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()


class SiglipForImageClassification(SiglipPreTrainedModel):
    """A linear classifier on the mean of the vision tower's final patch tokens (not the MAP pooler).

    Loading a `SiglipModel` checkpoint gives a freshly initialised `classifier` (with a warning) to train.
    `labels` select the loss by `config.problem_type` as transformers does: regression (MSE) when
    `num_labels == 1`, single-label cross-entropy for integer labels, multi-label BCE otherwise.
    """

    config_class = SiglipConfig
    _new_head_prefixes = ("classifier.",)

    def __init__(self, config: SiglipConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = SiglipVisionTransformer(config.vision_config)
        hidden = config.vision_config.hidden_size
        self.classifier = nn.Linear(hidden, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> ImageClassifierOutput | tuple:
        vision_out = self.vision_model(
            pixel_values,
            _flag(output_attentions, self.config.output_attentions),
            _flag(output_hidden_states, self.config.output_hidden_states),
            interpolate_pos_encoding,
        )
        logits = self.classifier(vision_out.last_hidden_state.mean(dim=1))
        loss = self._loss(logits, labels) if labels is not None else None
        out = ImageClassifierOutput(loss, logits, vision_out.hidden_states, vision_out.attentions)
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(logits.device)
        problem_type = self.config.problem_type
        if problem_type is None:
            if self.num_labels == 1:
                problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem_type = "single_label_classification"
            else:
                problem_type = "multi_label_classification"
        if problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        if problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        raise ValueError(f"unknown problem_type {problem_type!r}")
