"""Checkpoint keys onto model keys: pure functions of names and shapes, no file and no model (timm's
`checkpoint_filter_fn` idea). `from_pretrained` reads the files, calls `match_state_dict`, then assigns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import CheckpointError

TOWER_PREFIXES = ("text_model.", "vision_model.")
TWO_TOWER_PARAMETERS = ("logit_scale", "logit_bias")
CLASSIFIER_PREFIX = "classifier."


@dataclass
class MatchedStateDict:
    """The checkpoint's tensors under the model's names, and the model's keys the checkpoint does not fill."""

    tensors: dict[str, torch.Tensor]
    missing: list[
        str
    ]  # allowed to be missing: freshly initialised heads or re-initialised mis-shaped weights


def match_state_dict(
    expected: Mapping[str, torch.Size],
    checkpoint: Mapping[str, torch.Tensor],
    *,
    new_head_prefixes: Sequence[str] = (),
    ignore_mismatched_sizes: bool = False,
    describe: str = "the model",
) -> MatchedStateDict:
    """Map checkpoint keys onto the model's (`expected`: key -> shape) and check them.

    Accepted differences: a tower checkpoint saved without its `text_model.` / `vision_model.` prefix
    (transformers 5), a full SigLIP checkpoint loaded into one tower (the other tower and the logit parameters
    are dropped), a classifier checkpoint loaded into a tower, stale `position_ids` buffers. Keys under
    `new_head_prefixes` may be missing (a head this model adds). Anything else missing, unexpected or
    mis-shaped raises a `CheckpointError` that lists the keys; `describe` names the checkpoint and the model.
    """
    towers = {name.split(".")[0] + "." for name in expected if name.startswith(TOWER_PREFIXES)}
    ignorable = {*TOWER_PREFIXES, *TWO_TOWER_PARAMETERS} - towers
    if CLASSIFIER_PREFIX + "weight" not in expected:  # a tower loaded from a classifier checkpoint
        ignorable.add(CLASSIFIER_PREFIX)
    ignorable = tuple(ignorable)
    matched: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: dict[str, str] = {}
    for key, tensor in checkpoint.items():
        name = key
        if name not in expected and len(towers) == 1:
            name = next(iter(towers)) + key  # an un-prefixed tower checkpoint
        if name not in expected:
            if not key.startswith(ignorable) and not key.endswith("position_ids"):
                unexpected.append(key)
        elif tensor.shape != expected[name]:
            mismatched[name] = f"{key}: checkpoint {tuple(tensor.shape)}, model {tuple(expected[name])}"
        else:
            matched[name] = tensor
    missing = [k for k in expected if k not in matched]
    allowed = {k for k in missing if k.startswith(tuple(new_head_prefixes))}
    if ignore_mismatched_sizes:
        allowed |= set(mismatched)
    problems = []
    if mismatched and not ignore_mismatched_sizes:
        problems.append(
            "mis-shaped weights (config.json does not describe them: use the config saved with these weights; to "
            "re-initialise them and train them instead, pass ignore_mismatched_sizes=True in Python or "
            "--ignore-mismatched-sizes to `siglip train`):\n  " + "\n  ".join(mismatched.values())
        )
    if unexpected:
        problems.append("unexpected weights:\n  " + "\n  ".join(unexpected))
    if hard_missing := [k for k in missing if k not in allowed and k not in mismatched]:
        problems.append("missing weights:\n  " + "\n  ".join(hard_missing))
    if problems:
        raise CheckpointError(f"Checkpoint {describe}:\n" + "\n".join(problems))
    return MatchedStateDict(matched, missing)


def owning_modules(keys: Sequence[str]) -> list[str]:
    """The names of the modules that directly own the given parameter keys ("" for the root), sorted."""
    return sorted({key.rsplit(".", 1)[0] if "." in key else "" for key in keys})
