"""`attn_implementation="flash_attention_2"`: attention through the `flash_attn` package, as transformers runs it.

The package and a CUDA GPU are required; without them loading fails with transformers' one-line
`ImportError`, never a silent fallback to another kernel. A padded text batch (an attention mask) goes through
`flash_attn_varlen_func` on the unpadded tokens, and the padded positions come out as zeros, exactly as in
transformers (so, as there, the pooled last position of a padded text differs from the SDPA path).
"""

from __future__ import annotations

import importlib.util

import torch

FLASH_ATTENTION_2 = "flash_attention_2"
_PREFACE = "FlashAttention2 has been toggled on, but it cannot be used due to the following error:"


def check_flash_attention(model_class: type, supported: bool) -> None:
    """Raise as transformers does when `model_class` cannot run FlashAttention 2 here: a class without support
    (`ValueError`), no `flash_attn` package or no CUDA device (`ImportError`)."""
    if not supported:
        raise ValueError(
            f"{model_class.__name__} does not support Flash Attention 2 yet: use 'sdpa' or 'eager'"
        )
    if importlib.util.find_spec("flash_attn") is None:
        raise ImportError(f"{_PREFACE} the package for FlashAttention2 doesn't seem to be installed.")
    if not torch.cuda.is_available():
        raise ImportError(
            f"{_PREFACE} FlashAttention2 is not available on CPU. Please make sure you are on any of the "
            "supported devices: ('cuda',)."
        )


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    scale: float,
) -> torch.Tensor:
    """Attention of (B, H, T, D) `q`, `k`, `v` by flash_attn, returned as (B, H, T, D).

    `attention_mask` is the encoders' additive (B, 1, 1, T) key mask (0 = keep) or None; with one, the kept
    tokens of each sequence attend among themselves and the padded positions give zeros.
    """
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # flash_attn takes (B, T, H, D)
    if attention_mask is None:
        out = flash_attn_func(q, k, v, dropout_p=dropout, softmax_scale=scale, causal=False)
        return out.transpose(1, 2)
    keep = attention_mask[:, 0, 0, :] == 0  # (B, T)
    lengths = keep.sum(dim=-1, dtype=torch.int32)
    cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    longest = int(lengths.max())
    out = flash_attn_varlen_func(
        q[keep], k[keep], v[keep],
        cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=longest, max_seqlen_k=longest,
        dropout_p=dropout, softmax_scale=scale, causal=False,
    )  # fmt: skip
    padded = q.new_zeros(q.shape)
    padded[keep] = out
    return padded.transpose(1, 2)
