"""The network both families share: the transformer blocks, the text tower, the attention-pooling head, the
vision transformer after its patch embeddings, big_vision's weight initialisation, the embedding contract and
the bases of the public models (two towers, one vision tower, one text tower, the image classifier).

A family (`siglip.core.siglip`, `siglip.core.siglip2`) adds only its patch embeddings, its vision transformer's
`forward`, and its public classes, which name their config and vision-transformer classes. Module and parameter
names follow transformers (`text_model.*`, `vision_model.*`, `logit_scale`, `logit_bias`, `classifier.*`), so
checkpoint files move between the two libraries unchanged.

Pixels to pooled image vector, top to bottom:
    patch embeddings -> pre-LN transformer encoder -> post LayerNorm -> attention pooling
Tokens to pooled text vector:
    token + position embeddings -> pre-LN transformer encoder -> final LayerNorm -> last position -> linear head
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import PretrainedConfig
from ..flash_attention import FLASH_ATTENTION_2, flash_attention
from ..loss import sigmoid_loss
from ..outputs import BaseModelOutputWithPooling, SiglipOutput
from ..pretrained import PreTrainedModel
from .configuration import TextTowerConfig


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh-approximated GELU: every released SigLIP uses it (big_vision's nn.gelu)."""
    return F.gelu(x, approximate="tanh")


# Plain functions, not partials: copy.deepcopy keeps them, so `activation is ACTIVATIONS[...]` stays true.
ACTIVATIONS = {"gelu_pytorch_tanh": gelu_tanh, "gelu": F.gelu}


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """`x / ||x||` along the last axis: how every embedding siglip returns is made unit-length.

    No epsilon, as transformers computes it (a zero vector gives NaN rather than a silent zero).
    """
    return x / x.norm(p=2, dim=-1, keepdim=True)


class Embedding(nn.Embedding):
    """`nn.Embedding` that leaves its table uninitialised on the meta device.

    `from_pretrained` builds models on the meta device and replaces every tensor; torch's `normal_` on a meta
    tensor would import torch._dynamo there (a one-off second). On a real device it initialises as usual.
    """

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


# --------------------------------------------------------------------------------------------------------
# Building blocks shared by both towers
# --------------------------------------------------------------------------------------------------------
class SiglipAttention(nn.Module):
    """Multi-head self-attention. Never causal; an additive key mask is optional (text padding only).

    An inference mode may replace `q_proj`, `k_proj` and `v_proj` by one submodule `qkv_proj` whose output
    holds the three side by side, in that order (eager int8: `siglip.tools.embeddings.int8`)."""

    def __init__(self, config: PretrainedConfig) -> None:
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
        out, weights = self.attend(x, attention_mask, output_attentions)
        return self.out_proj(out), weights

    def attend(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The heads' outputs, concatenated (the input of `out_proj`), and the attention maps when asked."""
        batch, length, _ = x.shape
        fused = self._modules.get("qkv_proj")  # read so, a model pickled whole before it existed works too
        if fused is None:
            projected = (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        else:
            projected = fused(x).chunk(3, dim=-1)
        q, k, v = (t.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2) for t in projected)
        dropout = self.config.attention_dropout if self.training else 0.0
        weights = None
        if output_attentions or self.config.attn_implementation == "eager":
            # The explicit path: the only one that can return the attention maps. Softmax in float32.
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            if attention_mask is not None:
                scores = scores + attention_mask
            weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(F.dropout(weights, p=dropout, training=self.training), v)
        elif self.config.attn_implementation == FLASH_ATTENTION_2:
            out = flash_attention(q, k, v, attention_mask, dropout, self.scale)
        else:
            out = self.scaled_dot_product(q, k, v, attention_mask, dropout)
        out = out.transpose(1, 2).reshape(batch, length, self.embed_dim)
        return out, (weights if output_attentions else None)

    def scaled_dot_product(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float,
    ) -> torch.Tensor:
        """The heads' outputs by torch's SDPA kernels (`attn_implementation` "sdpa"), in the dtype of `q`, `k`,
        `v` (a subclass may run them in another)."""
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attention_mask, dropout_p=dropout, scale=self.scale
        )


class SiglipMLP(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
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

    def __init__(self, config: PretrainedConfig) -> None:
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
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        # set by `PreTrainedModel.activation_checkpointing_enable`: which layers recompute, and how
        self.checkpointed = [True] * config.num_hidden_layers
        self.checkpoint_function: Callable[..., Any] = functools.partial(checkpoint, use_reentrant=False)

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
        for layer, checkpointed in zip(self.layers, self.checkpointed, strict=True):
            if recompute and checkpointed:  # keep only each layer's input; recompute its inside in backward
                x, weights = self.checkpoint_function(layer, x, attention_mask, output_attentions)
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
    def __init__(self, config: TextTowerConfig) -> None:
        super().__init__()
        self.token_embedding = Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = Embedding(config.max_position_embeddings, config.hidden_size)

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


def key_padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, T) with 1 = keep -> additive (B, 1, 1, T) mask on the keys, or None when nothing is masked.

    While exporting (ONNX) the mask is always built: whether anything is masked depends on the values, which
    a graph of dynamic inputs cannot branch on."""
    if attention_mask is None or (not torch.compiler.is_exporting() and bool(attention_mask.all())):
        return None
    blocked = (attention_mask == 0)[:, None, None, :]
    return torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill(
        blocked, torch.finfo(dtype).min
    )


class SiglipTextTransformer(nn.Module):
    def __init__(self, config: TextTowerConfig) -> None:
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
        mask = key_padding_mask(attention_mask, x.dtype)
        x, hidden_states, attentions = self.encoder(x, mask, output_attentions, output_hidden_states)
        x = self.final_layer_norm(x)
        # Pool the last position: with SigLIP's fixed-length padding (pad == eos) it is always an EOS token.
        pooled = self.head(x[:, -1, :])
        return BaseModelOutputWithPooling(x, pooled, hidden_states, attentions)


# --------------------------------------------------------------------------------------------------------
# Vision tower, after the patch embeddings
# --------------------------------------------------------------------------------------------------------
class SiglipMultiheadAttentionPoolingHead(nn.Module):
    """MAP head: a learned probe attends over the patch tokens, then a residual MLP; returns (B, D)."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, config.hidden_size))
        # nn.MultiheadAttention (not a re-implementation) so eval-mode numbers match transformers bit for bit.
        self.attention = nn.MultiheadAttention(
            config.hidden_size, config.num_attention_heads, batch_first=True
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pool (B, N, D) tokens to (B, D). `key_mask`: an additive (B, 1, 1, N) mask from `key_padding_mask`
        (NaFlex padding patches), or None."""
        pooled = self.attend(x, key_mask)
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]

    def attend(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """The probe's attention over the tokens, (B, 1, D) (a subclass may compute it otherwise)."""
        # a contiguous copy per image, as transformers makes it: an expanded (stride 0) probe takes another
        # matrix-product path in the attention's input projection and can differ in the last bit
        probe = self.probe.repeat(x.shape[0], 1, 1)
        if key_mask is not None:  # nn.MultiheadAttention takes a float mask of (B * heads, 1, N)
            heads = self.attention.num_heads
            key_mask = key_mask.expand(-1, heads, -1, -1).reshape(-1, 1, x.shape[1])
        return self.attention(probe, x, x, attn_mask=key_mask)[0]


class VisionTransformerBase(nn.Module):
    """Patch embeddings -> encoder -> post LayerNorm -> MAP head. Each family names its patch embeddings
    (`embeddings_class`) and writes `forward`: embed its inputs, then `_encode` (everything after the
    embeddings, with the padding mask of NaFlex patches when there is one)."""

    embeddings_class: type[nn.Module]

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = self.embeddings_class(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = SiglipMultiheadAttentionPoolingHead(config) if config.vision_use_head else None

    def _encode(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        output_attentions: bool,
        output_hidden_states: bool,
    ) -> BaseModelOutputWithPooling:
        """Embedded patches (B, N, D) to the tower's output; `key_mask` (additive, (B, 1, 1, N)) hides padding
        patches from the encoder's keys and from the pooling head."""
        x, hidden_states, attentions = self.encoder(x, key_mask, output_attentions, output_hidden_states)
        x = self.post_layernorm(x)
        pooled = self.head(x, key_mask) if self.head is not None else None
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
    elif isinstance(module, TwoTowerMixin):
        # big_vision's starting temperature 10 and bias -10 (transformers starts both at 0, which makes the
        # first steps of from-scratch training fight N - 1 negatives per positive).
        nn.init.constant_(module.logit_scale, math.log(10.0))
        nn.init.constant_(module.logit_bias, -10.0)
    elif isinstance(module, ClassifierMixin) and isinstance(module.classifier, nn.Linear):
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
# The bases of the public models
# --------------------------------------------------------------------------------------------------------
class TwoTowerPreTrainedModel(PreTrainedModel):
    """Base of every model of both families: `from_pretrained` / `save_pretrained` (see `PreTrainedModel`)
    and big_vision's initialisation for training from scratch."""

    def _init_weights(self, module: nn.Module) -> None:
        _init_module(module, self.config)


def as_embedding(features: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The last step of the embedding contract (`encode_images` / `encode_texts` of both families): float32,
    so a bf16 or fp16 model is normalised at full precision, then unit-length unless `normalize=False`."""
    features = features.float()
    return l2_normalize(features) if normalize else features


class TowerFeatures(torch.Tensor):
    """What `get_text_features` / `get_image_features` return: the pooled embeddings (B, D), the tensor
    transformers 4.x returns, that also reads as the tower output transformers 5.x returns: `.pooler_output`
    is the tensor itself, and `.last_hidden_state` (with `.hidden_states` / `.attentions` when asked for)
    the tower's. Code written for either runs. Any operation on it gives a plain tensor."""

    __torch_function__ = (
        torch._C._disabled_torch_function_impl
    )  # results are plain tensors, as nn.Parameter's

    @property
    def pooler_output(self) -> torch.Tensor:
        return self


def tower_features(output: BaseModelOutputWithPooling) -> torch.Tensor:
    """The `TowerFeatures` of a tower's output (its plain pooled tensor while torch.compile or an ONNX export
    traces the model: a traced tensor takes no subclass or attributes)."""
    if torch.compiler.is_compiling():
        return output.pooler_output
    features = output.pooler_output.as_subclass(TowerFeatures)
    for name, value in output.items():
        if name != "pooler_output":
            setattr(features, name, value)
    return features


class TwoTowerMixin:
    """The two-tower model of both families (`SiglipModel`, `Siglip2Model`): it builds the text tower, the
    vision tower of the class's `vision_transformer_class` and the learned `logit_scale` and `logit_bias`, and
    holds the text side of the embedding contract, the logits, the loss and the output. A family adds its
    image inputs (`get_image_features`, `encode_images`, `forward`); `_output_class` is the output dataclass.
    """

    vision_transformer_class: type[nn.Module]
    main_input_name = "input_ids"
    _output_class: type[SiglipOutput] = SiglipOutput

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.text_model = SiglipTextTransformer(config.text_config)
        self.vision_model = self.vision_transformer_class(config.vision_config)
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
        """Text embeddings (B, projection_size): the text head's output, not normalised (see
        `tower_features`: the tower's other outputs ride along as attributes)."""
        output_attentions, output_hidden_states = self._output_flags(output_attentions, output_hidden_states)
        return tower_features(
            self.text_model(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states)
        )

    def encode_texts(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, normalize: bool = True
    ) -> torch.Tensor:
        """Text embeddings (B, D) in float32, unit-length unless `normalize=False`; the text counterpart of
        `encode_images`. Build `input_ids` with `fixed_length_ids` (the checkpoints pool the last position)."""
        input_ids = input_ids.to(self.device)
        features = self.get_text_features(input_ids, attention_mask)
        return as_embedding(features, normalize)

    def _image_pooled(self, vision_output: BaseModelOutputWithPooling) -> torch.Tensor:
        if vision_output.pooler_output is None:
            vision_class = type(self).__name__.removesuffix("Model") + "VisionModel"
            raise ValueError(
                "this vision tower has no pooling head (vision_use_head=False), so it gives no image embedding; "
                f"use {vision_class} and its last_hidden_state"
            )
        return vision_output.pooler_output

    def _image_features(self, vision_output: BaseModelOutputWithPooling) -> torch.Tensor:
        """`get_image_features` of both families: the `TowerFeatures` of the vision tower's output."""
        self._image_pooled(vision_output)  # a tower without pooling head gives no features
        return tower_features(vision_output)

    def _contrastive_forward(
        self,
        input_ids: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        image_inputs: dict[str, Any],
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        return_loss: bool | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        return_dict: bool | None,
    ) -> SiglipOutput | tuple:
        """`forward` of both families: `image_inputs` are the vision tower's own keyword arguments besides
        the pixels (SigLIP: `interpolate_pos_encoding`; NaFlex: `pixel_attention_mask`, `spatial_shapes`)."""
        if input_ids is None or pixel_values is None:
            raise ValueError(
                f"{type(self).__name__}.forward needs both input_ids and pixel_values; for one modality use "
                "get_text_features / get_image_features"
            )
        output_attentions, output_hidden_states = self._output_flags(output_attentions, output_hidden_states)
        vision_out = self.vision_model(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **image_inputs,
        )
        text_out = self.text_model(
            input_ids, attention_mask, position_ids, output_attentions, output_hidden_states
        )
        return self._contrastive_output(text_out, vision_out, return_loss, return_dict)

    def _contrastive_output(
        self,
        text_out: BaseModelOutputWithPooling,
        vision_out: BaseModelOutputWithPooling,
        return_loss: bool | None,
        return_dict: bool | None,
    ) -> SiglipOutput | tuple:
        """Normalised embeddings, `exp(logit_scale) * cos + logit_bias` logits and (optionally) the loss."""
        image_embeds = self._image_pooled(vision_out)
        image_embeds = l2_normalize(image_embeds)
        text_embeds = text_out.pooler_output
        text_embeds = l2_normalize(text_embeds)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp() + self.logit_bias
        out = self._output_class(
            loss=sigmoid_loss(logits_per_text) if return_loss else None,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_out,
            vision_model_output=vision_out,
        )
        return self._returned(out, return_dict)


class TextTowerMixin:
    """What the text-tower models share (`SiglipTextModel`, `Siglip2TextModel`): SigLIP's text tower, built
    from the text config itself. `pooler_output` is the text head's output at the last position (unnormalised);
    tokenize with `padding="max_length"` (the models were trained on fixed-length, EOS-padded text)."""

    main_input_name = "input_ids"

    def __init__(self, config: TextTowerConfig) -> None:
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
            *self._output_flags(output_attentions, output_hidden_states),
        )
        return self._returned(out, return_dict)


class VisionTowerMixin:
    """What the vision-tower models share (`SiglipVisionModel`, `Siglip2VisionModel`): one `vision_model` of the
    class's `vision_transformer_class`, built from the vision config itself."""

    vision_transformer_class: type[nn.Module]

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.vision_model = self.vision_transformer_class(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding


class ClassifierMixin:
    """What the image classifiers share (`SiglipForImageClassification`, `Siglip2ForImageClassification`):
    a vision tower of the class's `vision_transformer_class`, a linear `classifier` on its pooled tokens, and
    the loss chosen by `config.problem_type` as transformers chooses it."""

    vision_transformer_class: type[nn.Module]
    _new_head_prefixes = ("classifier.",)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = self.vision_transformer_class(config.vision_config)
        hidden = config.vision_config.hidden_size
        self.classifier = nn.Linear(hidden, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding

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
