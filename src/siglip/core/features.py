"""What the tokenizer, the image processor and the processor return, and how they write their config files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


class BatchFeature(dict):
    """Model inputs by name, as returned by the tokenizer, the image processor and the processor.

    A dict (`inputs["pixel_values"]`, `model(**inputs)`) that also reads by attribute (`inputs.input_ids`).
    `to(device)` / `to(dtype)` move every tensor and cast only the floating ones (ids stay int64), in place,
    and return the same object, as transformers' `BatchFeature` does.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no {name!r}; keys: {list(self)}") from None

    def to(self, *args: Any, **kwargs: Any) -> BatchFeature:
        device = kwargs.get("device")
        if device is None and args and not isinstance(args[0], torch.dtype):
            device = args[0]
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                if value.is_floating_point():
                    self[key] = value.to(*args, **kwargs)
                elif device is not None:
                    self[key] = value.to(device=device, non_blocking=kwargs.get("non_blocking", False))
        return self


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a config file the way transformers does (sorted keys, 2-space indent)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
