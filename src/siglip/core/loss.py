"""The SigLIP sigmoid loss, on one process and at scale.

Every image-text pair is an independent binary classification: the matching pair (the diagonal) is positive,
every other pair negative. With logits `z_ij = exp(t) <x_i, y_j> + b` and labels `l_ij = 2 [i == j] - 1`, the
loss is `-(1/N) sum_ij log sigmoid(l_ij z_ij)`: a sum over one axis, a mean over the other (big_vision's
`sum / batch`). Unlike softmax, the sigmoid takes any number of positives per row exactly: with a label per
pair (`siglip_loss(labels=...)`: a class id, or one id for identical captions), `l_ij = 2 [c_i == c_j] - 1`,
so pairs of one class are positives rather than false negatives.

`sigmoid_loss` is that definition on a square block of logits (what `SiglipModel(return_loss=True)` returns).
`siglip_loss` computes it from embeddings, also for a global batch spread over the ranks of a
`torch.distributed` process group (paper section 3.3): no normalisation couples the pairs, so each rank keeps
its images while the texts travel, and the logits never need to exist all at once:

- `mode="ring"`: texts go round the ring of ranks in both directions with point-to-point send/receive, one
  block of logits per step; the backward pass sends them round again, carrying their gradients home. No rank
  ever holds the global batch, and only a rank's own block holds positives.
- `mode="all_gather"`: the simple baseline; gathers every text and builds this rank's b x B logits at once.
- `chunk_size`: with `mode="local"` or `"ring"`, logits exist one `chunk_size x chunk_size` tile at a time in
  both passes (a custom autograd function recomputes them in backward), so memory is O(b D), not O(b B).

With labels, every block may hold positives: the labels travel round the ring (or are gathered) with the texts,
and each tile compares its rows' labels with its columns'. Without labels only a rank's own block has
positives, on its diagonal, which is negated in place without building any label matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..errors import UsageError

Mode = Literal["local", "all_gather", "ring"]
MODES: tuple[str, ...] = ("local", "all_gather", "ring")
# Where a block (or tile) of logits has its positive pairs: on the diagonal with this offset (an int), where the
# rows' labels equal the columns' (a pair of label vectors), or nowhere (None).
Positives = int | tuple[torch.Tensor, torch.Tensor] | None
# Labelled logits are signed a strip of rows at a time, while the strip is in cache: the signs never take more
# than this many elements (64 KiB in float32).
SIGN_STRIP = 2**14


def sigmoid_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """The reference loss of one square block of logits whose diagonal holds the positive pairs.

    This is the loss `SiglipModel(return_loss=True)` returns, computed in float32 (float64 for float64 logits)
    whatever the input dtype.
    """
    if logits_per_text.ndim != 2 or logits_per_text.shape[0] != logits_per_text.shape[1]:
        raise ValueError(
            "the sigmoid loss needs as many texts as images (one matching pair per row); got logits of shape "
            f"{tuple(logits_per_text.shape)}"
        )
    logits = logits_per_text.to(_compute_dtype(logits_per_text), copy=True)
    return -F.logsigmoid(_times_labels_(logits, 0)).sum(dim=-1).mean()


def check_chunk_size(chunk_size: int | None, mode: str, name: str = "chunk_size") -> None:
    """The rule for a chunk size: None, or a positive int with mode "local" or "ring" (all_gather builds the
    b x B logits at once, which chunks cannot bound). `name` is how the caller calls the option."""
    if chunk_size is None:
        return
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise UsageError(f"{name} must be a positive int or None, got {chunk_size!r}")
    if mode == "all_gather":
        raise UsageError(
            f"{name} bounds memory with the ring loss (mode 'ring', or 'local' on one process); all_gather "
            "builds b x B logits at once: use the ring loss"
        )


def siglip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    mode: Mode = "local",
    chunk_size: int | None = None,
    group: dist.ProcessGroup | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sigmoid loss of the global batch, from this rank's L2-normalised embeddings.

    Args:
        image_embeds, text_embeds: this rank's (b, D) embeddings; row i of each is a matching pair. Ranks may
            hold different batch sizes b, but the same width D.
        logit_scale: the log temperature t, shape (1,); the logits are `exp(t) <x, y> + logit_bias`.
        logit_bias: the bias b, shape (1,).
        mode: "local" (this process's batch only, no communication, as transformers' `return_loss`), "ring"
            or "all_gather" (the global batch of every rank in `group`).
        chunk_size: with "local" or "ring", build the logits `chunk_size x chunk_size` at a time in forward
            and backward, so that memory grows as O(b D) instead of O(b^2) or O(b B). None: whole blocks.
        group: the process group for "ring" and "all_gather"; None is the default group.
        labels: None (image i and text j match only when they are the same pair, i == j), or this rank's (b,)
            integer labels, one per pair: image i and text j (of any rank) match when their pairs' labels are
            equal, e.g. a class id, or one id per distinct caption. Labels must agree across ranks (the same
            class has the same id everywhere) and be given on every rank or on none. Unique labels give
            exactly the loss of None.

    Returns:
        `-(1/B) sum_ij log sigmoid(l_ij z_ij)` over all B = sum of b images and B texts of the global batch
        (summed over texts, averaged over images): the same value on every rank, equal to `sigmoid_loss` of
        the concatenated batch on one process. Logits are computed in float32 (float64 for float64 inputs),
        also under autocast.

    Gradients across ranks: every rank returns the whole loss L, so the W ranks' backward passes together
    differentiate W * L: on rank r, `image_embeds.grad` and `text_embeds.grad` are W * dL/d(rank r's
    embeddings), and `logit_scale.grad`, `logit_bias.grad` are W times rank r's share of dL/dt, dL/db.
    DistributedDataParallel (and FSDP) average gradients over the ranks, which makes every parameter's
    gradient exactly the full-batch dL/dtheta (the gradients of open_clip's loss normalised by the local
    batch, with a value that agrees across ranks). Every rank must call backward: it communicates.

    Raises:
        ValueError, on every rank, when the ranks' inputs do not fit together (2-D, as many images as texts,
        one width, one value in each of logit_scale and logit_bias, one integer label per pair on every rank
        or labels on none) or hold a NaN or infinity. The check costs one small all_gather before the
        exchange, so a bad rank fails everywhere instead of leaving the other ranks waiting.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_chunk_size(chunk_size, mode)
    if mode != "local" and not dist.is_initialized():
        raise ValueError(f"mode={mode!r} needs an initialised torch.distributed process group")
    if mode != "local" and group is None:
        group = dist.group.WORLD
    sizes = _batch_sizes(image_embeds, text_embeds, logit_scale, logit_bias, labels, group)
    if labels is not None:  # one dtype on every rank, for the exchange
        labels = labels.to(image_embeds.device, torch.long)
    with _without_autocast(image_embeds.device):
        loss = _loss_sum(
            image_embeds, text_embeds, logit_scale, logit_bias, labels, mode, chunk_size, group, sizes
        )
        loss = loss / sum(sizes)
        return _SumOverRanks.apply(loss, group) if len(sizes) > 1 else loss


def _loss_sum(x, y, logit_scale, logit_bias, labels, mode, chunk, group, sizes) -> torch.Tensor:
    """Sum of the pair losses of this rank's images against the global batch's texts."""
    if mode == "all_gather" and len(sizes) > 1:
        rank = dist.get_rank(group)
        texts = _AllGather.apply(y, group, sizes)
        if labels is None:
            positives: Positives = sum(sizes[:rank])
        else:
            positives = (labels, _all_gather(labels[:, None], group, sizes).flatten())
        return _naive_nll_sum(x, texts, logit_scale, logit_bias, positives)
    if chunk is None and mode != "ring":
        return _naive_nll_sum(x, y, logit_scale, logit_bias, 0 if labels is None else (labels, labels))
    return _BlockwiseLoss.apply(x, y, logit_scale, logit_bias, labels, _Ring(group, sizes), chunk)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _without_autocast(device: torch.device):
    return torch.autocast(device.type, enabled=False)


def _negate_positives_(t: torch.Tensor, positives: Positives) -> torch.Tensor:
    """Multiply `t` in place by minus the labels: negate the positive pairs (`Positives`) and keep the rest.
    A diagonal is flipped in place, building no label matrix; labelled pairs are multiplied by their signs,
    built a strip of rows at a time (at most SIGN_STRIP of them exist at once)."""
    if isinstance(positives, int):
        t.diagonal(positives).neg_()
    elif positives is not None:
        for strip, signs in _label_strips(t, *positives):
            strip.mul_(signs)
    return t


def _signed_sigmoid_(t: torch.Tensor, positives: Positives) -> torch.Tensor:
    """Replace `t` in place by -l sigmoid(-l t), the derivative of -log sigmoid(l t): exact even where
    sigmoid(l t) rounds to 1. Labelled strips are signed, squashed and signed again while in cache."""
    if not isinstance(positives, tuple):
        return _negate_positives_(_negate_positives_(t, positives).sigmoid_(), positives)
    for strip, signs in _label_strips(t, *positives):
        strip.mul_(signs).sigmoid_().mul_(signs)
    return t


def _label_strips(
    t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> Iterator[tuple[torch.Tensor, ...]]:
    """(a strip of rows of `t`, its signs `_minus_labels`) for strips of at most SIGN_STRIP elements."""
    strip = max(1, SIGN_STRIP // max(len(cols), 1))
    for i in range(0, len(rows), strip):
        yield t[i : i + strip], _minus_labels(rows[i : i + strip], cols, t.dtype)


def _minus_labels(rows: torch.Tensor, cols: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Minus the labels of the pairs of images labelled `rows` and texts labelled `cols`: -1 where the labels
    are equal (positives), +1 elsewhere (negatives)."""
    one = torch.ones((), dtype=dtype, device=rows.device)
    return torch.where(rows[:, None] == cols, -one, one)


def _times_labels_(logits: torch.Tensor, positives: Positives) -> torch.Tensor:
    """Multiply `logits` in place by the labels: +1 on the positive pairs, -1 everywhere else."""
    return _negate_positives_(logits.neg_(), positives)


def _scaled(x: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    dtype = _compute_dtype(x)
    return x.to(dtype) * logit_scale.to(dtype).exp()


def _logits(scaled_images: torch.Tensor, texts: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.addmm(bias, scaled_images, texts.to(scaled_images.dtype).T)


def _naive_nll_sum(x, y, logit_scale, logit_bias, positives: Positives) -> torch.Tensor:
    """All of this rank's logits at once, differentiated by autograd (which keeps them for backward)."""
    sx = _scaled(x, logit_scale)
    logits = _logits(sx, y, logit_bias.to(sx.dtype))
    return -F.logsigmoid(_times_labels_(logits, positives)).sum()


class _Block(NamedTuple):
    """A rank's texts as they meet this rank's images: embeddings, labels (None: unlabelled) and whether they
    are this rank's own texts."""

    embeds: torch.Tensor
    labels: torch.Tensor | None
    own: bool


class _Images(NamedTuple):
    """This rank's images with what their logits need: the log temperature, the bias (in the compute dtype),
    the tile size (None: whole blocks) and the pairs' labels (None: the diagonal pairs match)."""

    embeds: torch.Tensor
    logit_scale: torch.Tensor
    bias: torch.Tensor
    chunk: int | None
    labels: torch.Tensor | None

    def tiles(self, texts: _Block) -> Iterator[tuple[slice, slice, Positives]]:
        """(image rows, text rows, the tile's positives) of each tile of logits against a block of texts."""
        embeds, labels, own = texts
        rows, cols = self.chunk or max(len(self.embeds), 1), self.chunk or max(len(embeds), 1)
        for i in range(0, len(self.embeds), rows):
            for j in range(0, len(embeds), cols):
                if self.labels is not None:
                    tile: Positives = (self.labels[i : i + rows], labels[j : j + cols])
                else:  # only this rank's own block holds positives, on its diagonal
                    tile = i - j if own else None
                yield slice(i, i + rows), slice(j, j + cols), tile

    def tile(self, texts: torch.Tensor, rows: slice, cols: slice) -> tuple[torch.Tensor, ...]:
        """The scaled images, the texts and the logits of one tile. Scaling a tile's rows here rather than all
        images once keeps memory at the tile, for 1/chunk of the tile's matrix product in time."""
        sx = _scaled(self.embeds[rows], self.logit_scale)
        tile_texts = texts[cols].to(sx.dtype)
        return sx, tile_texts, _logits(sx, tile_texts, self.bias)


@torch.no_grad()
def _nll_sum(images: _Images, texts: _Block) -> torch.Tensor:
    """Sum of -log sigmoid(l z) = softplus(-l z) over the logits of `images` against `texts`, tile by tile.

    softplus needs no sign flip of the whole tile and no buffer beside its output, unlike logsigmoid; it
    returns x itself past x = 20, which differs from log(1 + e^x) by under e^-20, below float32 resolution.
    """
    total = images.bias.new_zeros(())
    for rows, cols, positives in images.tiles(texts):
        total += _tile_nll_sum(images, texts.embeds, rows, cols, positives)
    return total


def _tile_nll_sum(images: _Images, texts, rows, cols, positives: Positives) -> torch.Tensor:
    """One tile's part of `_nll_sum`. Its temporaries die with the call, so one tile's exist at a time."""
    _, _, logits = images.tile(texts, rows, cols)
    return F.softplus(_negate_positives_(logits, positives)).sum()


@torch.no_grad()
def _nll_backward_(images: _Images, texts: _Block, grad, grad_sx, grad_texts) -> torch.Tensor:
    """Add `grad` times the gradient of `_nll_sum` w.r.t. the scaled images exp(t) x and the texts to
    `grad_sx` and `grad_texts`; return the gradient w.r.t. the bias. Recomputes each tile of logits."""
    grad_bias = images.bias.new_zeros(())
    for rows, cols, positives in images.tiles(texts):
        grad_bias += _tile_backward_(images, texts.embeds, rows, cols, positives, grad, grad_sx, grad_texts)
    return grad_bias


def _tile_backward_(images: _Images, texts, rows, cols, positives, grad, grad_sx, grad_texts) -> torch.Tensor:
    """One tile's part of `_nll_backward_` (its temporaries die with the call)."""
    sx, tile_texts, logits = images.tile(texts, rows, cols)
    g = _signed_sigmoid_(logits, positives).mul_(grad)
    grad_sx[rows].addmm_(g, tile_texts)
    grad_texts[cols].addmm_(g.T, sx)
    return g.sum()


class _Ring:
    """The schedule of the bidirectional ring over `group`, whose ranks hold `sizes[r]` pairs each.

    A rank's texts travel right (to rank + 1, + 2, ...) for `world // 2` steps and left for
    `(world - 1) // 2`, so every other rank sees them exactly once in ceil((W - 1) / 2) steps; with even W the
    two directions would meet at the rank opposite, so only the rightward copy goes that far. A single
    process (`group` None or of size 1) is a ring of no steps.
    """

    def __init__(self, group: dist.ProcessGroup | None, sizes: list[int]) -> None:
        self.group, self.sizes, self.world = group, sizes, len(sizes)
        self.rank = dist.get_rank(group) if self.world > 1 else 0
        self.reach = (self.world // 2, (self.world - 1) // 2)  # right, left
        self.steps = self.reach[0]

    def directions(self, step: int) -> int:
        """How many directions (right first, then left) still travel at `step`."""
        return sum(step <= reach for reach in self.reach)

    def shift(self, step: int, flows: list[tuple[torch.Tensor, ...]]) -> list[tuple[torch.Tensor, ...]]:
        """Pass flows[0] one rank right and flows[1] one rank left (while they still travel); return what
        arrives: the blocks of ranks rank - step and rank + step."""
        directions = (1, -1)[: self.directions(step)]
        return self._exchange(
            [(flow, d, self.rank - d * step) for flow, d in zip(flows, directions, strict=False)]
        )

    def send_home(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Send each direction's carried gradient to the rank owning its texts, `reach` ranks back; return
        those that arrive for this rank's own texts."""
        moves = [
            ((g,), -d * reach, self.rank) for g, d, reach in zip(grads, (1, -1), self.reach, strict=False)
        ]
        return [g for (g,) in self._exchange(moves)]

    def _exchange(
        self, moves: list[tuple[tuple[torch.Tensor, ...], int, int]]
    ) -> list[tuple[torch.Tensor, ...]]:
        """For each (tensors, offset, owner): send `tensors` to rank + offset and receive their counterparts,
        shaped for rank `owner`'s batch, from rank - offset. All in one batch, so that they overlap."""
        ops, received = [], []
        for tensors, offset, owner in moves:
            buffers = tuple(t.new_empty((self.sizes[owner % self.world], *t.shape[1:])) for t in tensors)
            for tag, (sent, buffer) in enumerate(zip(tensors, buffers, strict=True)):
                ops.append(self._op(dist.isend, sent.contiguous(), self.rank + offset, tag))
                ops.append(self._op(dist.irecv, buffer, self.rank - offset, tag))
            received.append(buffers)
        for work in dist.batch_isend_irecv(ops) if ops else ():
            work.wait()
        return received

    def _op(self, op, tensor: torch.Tensor, peer: int, tag: int) -> dist.P2POp:
        return dist.P2POp(op, tensor, group=self.group, group_peer=peer % self.world, tag=tag)


class _BlockwiseLoss(torch.autograd.Function):
    """Sum of the pair losses of this rank's images against every rank's texts, which the ring brings by.

    Only the inputs are saved (O(b D)); backward sends the texts round again and recomputes every tile of
    logits, each carrying the gradient its visits add to it. Labels, if any, travel with their texts. With a
    ring of one process this is the memory-bounded loss of the local batch.
    """

    @staticmethod
    def forward(ctx, image_embeds, text_embeds, logit_scale, logit_bias, labels, ring: _Ring, chunk):
        ctx.save_for_backward(image_embeds, text_embeds, logit_scale, logit_bias, labels)
        ctx.ring, ctx.chunk = ring, chunk
        bias = logit_bias.to(_compute_dtype(image_embeds))
        images = _Images(image_embeds, logit_scale, bias, chunk, labels)
        total = _nll_sum(images, _Block(text_embeds, labels, own=True))
        flows = [_setting_off(text_embeds, labels)] * 2
        for step in range(1, ring.steps + 1):
            flows = ring.shift(step, flows)
            for flow in flows:
                total += _nll_sum(images, _visiting(flow, labels))
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, y, logit_scale, logit_bias, labels = ctx.saved_tensors
        ring, dtype = ctx.ring, _compute_dtype(x)
        with _without_autocast(x.device):
            images = _Images(x, logit_scale, logit_bias.to(dtype), ctx.chunk, labels)
            grad_sx, grad_y = torch.zeros_like(x, dtype=dtype), torch.zeros_like(y, dtype=dtype)
            grad_bias = _nll_backward_(images, _Block(y, labels, own=True), grad, grad_sx, grad_y)
            # Texts set off bare; the first rank they reach starts their gradient, later ones add to it.
            bare = _setting_off(y, labels)
            carried = [bare] * 2
            for step in range(1, ring.steps + 1):
                for i, flow in enumerate(ring.shift(step, carried)):
                    texts = _visiting(flow, labels)
                    grad_texts = (
                        flow[-1] if len(flow) > len(bare) else torch.zeros_like(texts.embeds, dtype=dtype)
                    )
                    grad_bias += _nll_backward_(images, texts, grad, grad_sx, grad_texts)
                    carried[i] = (*flow[: len(bare)], grad_texts)
            for g in ring.send_home([flow[-1] for flow in carried[: ring.directions(1)]]):
                grad_y += g
            # Chain rule through sx = exp(t) x: dL/dt = <dL/dsx, sx> = exp(t) <dL/dsx, x>, dL/dx = exp(t) dL/dsx.
            scale = logit_scale.to(dtype).exp()
            grad_scale = torch.vdot(grad_sx.flatten(), x.to(dtype).flatten()) * scale
            grad_x = grad_sx.mul_(scale)
        return (
            grad_x.to(x.dtype),
            grad_y.to(y.dtype),
            grad_scale.to(logit_scale.dtype).view_as(logit_scale),
            grad_bias.to(logit_bias.dtype).view_as(logit_bias),
            None,
            None,
            None,
        )


def _setting_off(texts: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """What a rank sends round the ring: its texts, with their labels if labelled."""
    return (texts,) if labels is None else (texts, labels)


def _visiting(flow: tuple[torch.Tensor, ...], labels: torch.Tensor | None) -> _Block:
    """Another rank's texts that the ring brings: `_setting_off`'s tuple (then maybe a carried gradient)."""
    return _Block(flow[0], None if labels is None else flow[1], own=False)


class _AllGather(torch.autograd.Function):
    """Every rank's texts in rank order; backward reduce-scatters the gradient back to the ranks."""

    @staticmethod
    def forward(ctx, texts, group, sizes: list[int]):
        ctx.group, ctx.sizes = group, sizes
        return _all_gather(texts, group, sizes)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        parts = [_pad_rows(g, max(ctx.sizes)) for g in grad.split(ctx.sizes)]
        own = torch.empty_like(parts[0])
        dist.reduce_scatter(own, parts, group=ctx.group)
        return own[: ctx.sizes[dist.get_rank(ctx.group)]], None, None


class _SumOverRanks(torch.autograd.Function):
    """The sum of every rank's `part`. Its backward sums the ranks' incoming gradients too, so each rank's part
    is differentiated for all W ranks' copies of the sum: W * L in all."""

    @staticmethod
    def forward(ctx, part, group):
        ctx.group = group
        total = part.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _all_gather(t: torch.Tensor, group, sizes: list[int]) -> torch.Tensor:
    """Every rank's rows of `t` (b, ...) in rank order, for ranks holding `sizes[r]` rows each."""
    # Collectives want equal shapes: pad every rank's block to the largest and strip the padding after.
    parts = [t.new_empty((max(sizes), *t.shape[1:])) for _ in sizes]
    dist.all_gather(parts, _pad_rows(t, max(sizes)), group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return F.pad(t, (0, 0, 0, rows - len(t)))


def _batch_sizes(x, y, logit_scale, logit_bias, labels, group: dist.ProcessGroup | None) -> list[int]:
    """Every rank's batch size, once all ranks' inputs are known to fit together.

    One small all_gather of each rank's shapes and a finiteness flag: a problem on any rank raises the same
    ValueError on all of them before the exchange, where a lone failing rank would leave the others waiting.
    """
    matrices = x.ndim == 2 and y.ndim == 2
    n_images, width_images = x.shape if matrices else (0, 0)
    n_texts, width_texts = y.shape if matrices else (0, 0)
    scalars = logit_scale.numel() == 1 and logit_bias.numel() == 1
    labelled = labels is not None
    # -1: not a vector of integers
    n_labels = len(labels) if labelled and labels.ndim == 1 and not _not_integer(labels.dtype) else -1
    finite = torch.stack([t.isfinite().all() for t in (x, y, logit_scale, logit_bias)]).all()
    shapes = [matrices, n_images, n_texts, width_images, width_texts, scalars, labelled, n_labels]
    stats = torch.cat([torch.tensor(shapes, device=x.device), finite.view(1).long()])
    world = dist.get_world_size(group) if group is not None else 1
    if world > 1:
        gathered = [torch.empty_like(stats) for _ in range(world)]
        dist.all_gather(gathered, stats, group=group)
        stats = torch.stack(gathered)
    rows = stats.view(world, -1).tolist()
    problem = _input_problem(rows)
    if problem:
        raise ValueError(problem)
    return [n_images for _, n_images, *_ in rows]


def _not_integer(dtype: torch.dtype) -> bool:
    """Floating-point, complex or bool: not a dtype for labels."""
    return dtype.is_floating_point or dtype.is_complex or dtype == torch.bool


def _input_problem(rows: list[list[int]]) -> str | None:
    """What is wrong with the ranks' inputs, described by `_batch_sizes`' statistics; None if nothing."""
    for rank, row in enumerate(rows):
        matrices, n_images, n_texts, width_images, width_texts, scalars, labelled, n_labels, finite = row
        where = f" on rank {rank}" if len(rows) > 1 else ""
        if not matrices:
            return f"image_embeds and text_embeds must be 2-D (batch, width){where}"
        if n_images != n_texts:
            return (
                f"the sigmoid loss pairs image i with text i, so it needs as many images as texts; "
                f"got {n_images} images and {n_texts} texts{where}"
            )
        if width_images != width_texts:
            return (
                f"image and text embeddings must have one width; got {width_images} and {width_texts}{where}"
            )
        if not scalars:
            return f"logit_scale and logit_bias must hold one value each{where}"
        if labelled and n_labels < 0:
            return f"labels must be a vector of integers (one per image-text pair){where}"
        if labelled and n_labels != n_images:
            return (
                f"labels must hold one label per image-text pair; got {n_labels} for {n_images} pairs{where}"
            )
        if not finite:
            return f"non-finite values (NaN or infinity) in the loss inputs{where}"
    if sum(row[1] for row in rows) == 0:  # one rank may hold no pairs (all its images failed), not every one
        return "the batch is empty: no image-text pair on any rank"
    if len({row[6] for row in rows}) > 1:
        given = [rank for rank, row in enumerate(rows) if row[6]]
        return f"labels must be given on every rank or on none; given on ranks {given} of 0..{len(rows) - 1}"
    widths = [row[3] for row in rows]
    if len(set(widths)) > 1:
        return f"the ranks' embeddings must have one width; got widths {widths} on ranks 0..{len(rows) - 1}"
    return None
