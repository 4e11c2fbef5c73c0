"""Renaming rules shared by the converters: a conversion is a list of rules over two key spaces.

Each rule is invertible, so one table serves both directions (open_clip -> siglip and back) and a round trip
reproduces every tensor bit for bit: renames copy, reshapes only change views, and fused tensors are split
and concatenated along their first axis.

`Tensors` wraps a source state dict and records which tensors a conversion took: a tensor that is neither
taken nor explicitly dropped (with a reason) fails the conversion, as our loader refuses unexpected weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from ...errors import CheckpointError


class ConversionError(CheckpointError):
    """A source checkpoint that cannot be converted: unknown layout, missing or unused or mis-shaped tensors."""


@dataclass
class Converted:
    """The result of a key remapping: the new tensors, where each came from, and what was left out and why."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # target key -> source key(s)
    dropped: dict[str, str] = field(default_factory=dict)  # source key -> reason
    notes: list[str] = field(default_factory=list)

    def put(self, key: str, tensor: torch.Tensor, origin: str) -> None:
        self.tensors[key] = tensor
        self.origin[key] = origin


class Tensors:
    """Source tensors being consumed by a conversion (`source` names the file in every error)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], source: str) -> None:
        self._tensors = dict(tensors)
        self._taken: set[str] = set()
        self.source = source

    def __contains__(self, key: str) -> bool:
        return key in self._tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._get(key).shape)

    def take(self, key: str) -> torch.Tensor:
        tensor = self._get(key)
        self._taken.add(key)
        return tensor

    def drop(self, key: str, reason: str, result: Converted) -> None:
        self._get(key)
        self._taken.add(key)
        result.dropped[key] = reason

    def count(self, template: str) -> int:
        """How many consecutive indices i have `template.format(i)` present (the depth of a tower)."""
        depth = 0
        while template.format(depth) in self._tensors:
            depth += 1
        return depth

    def check_all_used(self) -> None:
        unused = [key for key in self._tensors if key not in self._taken]
        if unused:
            shown = ", ".join(f"'{k}' {tuple(self._tensors[k].shape)}" for k in unused[:8])
            more = f" and {len(unused) - 8} more" if len(unused) > 8 else ""
            raise ConversionError(
                f"'{self.source}': {len(unused)} tensor(s) have no place in the converted model: {shown}{more}."
            )

    def _get(self, key: str) -> torch.Tensor:
        if key not in self._tensors:
            raise ConversionError(f"'{self.source}': tensor '{key}' is missing.")
        return self._tensors[key]


@dataclass(frozen=True)
class Rename:
    """One tensor to one tensor; `forward`/`backward` change its shape (views only) when the layouts differ."""

    source: str
    target: str
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    backward: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class Fuse:
    """Tensors concatenated on axis 0 on one side, split on the other, e.g. timm's `qkv` and our q/k/v.

    `source` and `target` list (key, parts): a key holds `parts` equal slices of the concatenation.
    """

    source: tuple[tuple[str, int], ...]
    target: tuple[tuple[str, int], ...]


Rule = Rename | Fuse


def apply(rules: Iterable[Rule], tensors: Tensors, result: Converted, *, reverse: bool = False) -> None:
    """Take every rule's input tensors from `tensors` and put the outputs into `result`."""
    for rule in rules:
        if isinstance(rule, Rename):
            src, dst = (rule.target, rule.source) if reverse else (rule.source, rule.target)
            change = rule.backward if reverse else rule.forward
            tensor = tensors.take(src)
            result.put(dst, change(tensor) if change else tensor, src)
        else:
            src_parts, dst_parts = (rule.target, rule.source) if reverse else (rule.source, rule.target)
            pieces = [tensors.take(key) for key, _ in src_parts]
            total = sum(parts for _, parts in src_parts)
            names = ", ".join(f"'{k}' {tuple(p.shape)}" for (k, _), p in zip(src_parts, pieces, strict=True))
            shapes = {p.shape[1:] for p in pieces if p.ndim}
            if len(shapes) != 1 or any(p.ndim == 0 for p in pieces) or sum(len(p) for p in pieces) % total:
                raise ConversionError(
                    f"'{tensors.source}': tensor(s) {names} do not split into {total} equal parts on axis 0."
                )
            joined = torch.cat(pieces, dim=0)
            unit = joined.shape[0] // total
            sizes = [parts * unit for _, parts in dst_parts]
            origin = "+".join(key for key, _ in src_parts)
            for (key, _), piece in zip(dst_parts, torch.split(joined, sizes, dim=0), strict=True):
                result.put(key, piece.clone(), origin)


def check_shapes(result: Converted, expected: Mapping[str, torch.Size], source: str) -> None:
    """Every expected tensor present with its shape, and nothing else (errors name file and tensor)."""
    for key, shape in expected.items():
        if key not in result.tensors:
            raise ConversionError(f"'{source}': nothing converts to tensor '{key}' {tuple(shape)}.")
        got = result.tensors[key].shape
        if got != shape:
            raise ConversionError(
                f"'{source}': tensor '{result.origin[key]}' gives '{key}' of shape {tuple(got)}, "
                f"expected {tuple(shape)}."
            )
    extra = [key for key in result.tensors if key not in expected]
    if extra:
        raise ConversionError(
            f"'{source}': tensor '{result.origin[extra[0]]}' converts to '{extra[0]}', which the model lacks."
        )


def encoder_layer_rules(src: str, dst: str, names: Mapping[str, str]) -> list[Rule]:
    """One pre-LN encoder layer with a fused q/k/v projection, at `src` (source) and `dst` (ours).

    `names` gives the source names of: ln1, qkv_weight, qkv_bias, out, ln2, fc1, fc2.
    """
    rules: list[Rule] = []
    for ours, theirs in (("layer_norm1", names["ln1"]), ("self_attn.out_proj", names["out"]),
                         ("layer_norm2", names["ln2"]), ("mlp.fc1", names["fc1"]), ("mlp.fc2", names["fc2"])):  # fmt: skip
        for leaf in ("weight", "bias"):
            rules.append(Rename(f"{src}{theirs}.{leaf}", f"{dst}{ours}.{leaf}"))
    for leaf in ("weight", "bias"):
        rules.append(
            Fuse(
                ((f"{src}{names[f'qkv_{leaf}']}", 3),),
                tuple((f"{dst}self_attn.{p}_proj.{leaf}", 1) for p in "qkv"),
            )
        )
    return rules


def unsqueeze0(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.unsqueeze(0)


def squeeze0(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.squeeze(0)


def as_vector(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(1)


def as_scalar(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(())
