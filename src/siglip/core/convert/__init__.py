"""Checkpoint converters: open_clip, timm and big_vision checkpoints in; ours back out to open_clip.

`convert(src, to)` reads an open_clip SigLIP checkpoint (a weights file, an open_clip training checkpoint, or a
folder with `open_clip_config.json`), a timm SigLIP image tower (a weights file, or a hub-style folder whose
`config.json` names the `architecture`) or a big_vision `.npz` (SigLIP, or SigLIP 2 NaFlex: a `Siglip2Model`),
detects its architecture, and writes a checkpoint folder that `siglip` and transformers load.
`to_open_clip(src, out)` goes back: a `SiglipModel` folder becomes `open_clip_config.json` +
`open_clip_model.safetensors` for `open_clip.create_model_and_transforms` (open_clip has no NaFlex model).

The key remapping lives in pure functions (`open_clip.open_clip_to_siglip`, `timm.timm_to_siglip`,
`big_vision.big_vision_to_siglip`, `open_clip.siglip_to_open_clip`); around them, one module per job:
`sources` finds a source's files and tells its family, `loading` reads them, `architecture` names what the
source is and checks every tensor's shape, `output` stages the output folder, `siglip_checkpoint` writes our
checkpoint (`convert`) and `open_clip_export` writes open_clip's (`to_open_clip`).
Every source tensor is used or named as dropped, every target tensor is checked for its shape, nothing is
initialised at random, and a failed conversion leaves no output folder behind.
"""

from __future__ import annotations

from ._rules import ConversionError
from .architecture import Architecture, detect
from .open_clip_export import to_open_clip
from .siglip_checkpoint import convert

__all__ = ["Architecture", "ConversionError", "convert", "detect", "to_open_clip"]
