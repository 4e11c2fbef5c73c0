"""Old path of the inference modes and ONNX export, kept so that code written for it still runs: they live in
`siglip.tools.embeddings.inference` now, int8 in `siglip.tools.embeddings.int8`, ONNX export in `siglip.tools.embeddings.onnx_export` (and the
precision table in `siglip.tools.embeddings.precision`)."""

from __future__ import annotations

from .tools.embeddings.inference import InferenceMode
from .tools.embeddings.int8 import fast_gelu_tanh, quantize_linear_layers, use_fast_gelu
from .tools.embeddings.onnx_export import OnnxCheck, check_onnx, export_onnx
from .tools.embeddings.precision import PRECISIONS, native_bf16

__all__ = ["PRECISIONS", "InferenceMode", "OnnxCheck", "check_onnx", "export_onnx", "fast_gelu_tanh",
           "native_bf16", "quantize_linear_layers", "use_fast_gelu"]  # fmt: skip
