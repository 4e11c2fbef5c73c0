"""Lets transformers, open_clip and timm (the test and benchmark oracles) import beside a torchvision whose
operators cannot load.

torchvision 0.28.0, the release PyPI has for torch 2.13 (open_clip's and timm's dependency, the converter
oracles), is a CUDA build: its C++ operators do not load with the CPU torch the tests run, and its import then
fails on two missing operator schemas, taking down every import of transformers, open_clip and timm (they
import torchvision when it is installed). Declaring the two schemas lets them import; no test or benchmark
uses them. Import this module before those libraries (tests/conftest.py and benchmarks/_common.py do).
"""

import torch

_TORCHVISION_SCHEMAS = torch.library.Library("torchvision", "FRAGMENT")
for _op in ("nms", "qnms"):
    try:
        _TORCHVISION_SCHEMAS.define(f"{_op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # a torchvision whose operators loaded (or an earlier definition): nothing to do
        break
