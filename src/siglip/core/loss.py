"""The SigLIP sigmoid loss, on one process and at scale.

Every image-text pair is an independent binary classification: the matching pair (the diagonal) is positive,
every other pair negative. With logits `z_ij = exp(t) <x_i, y_j> + b` and labels `l_ij = 2 [i == j] - 1`, the
loss is `-(1/N) sum_ij log sigmoid(l_ij z_ij)`: a sum over one axis, a mean over the other (big_vision's
`sum / batch`).

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
        one width, one value in each of logit_scale and logit_bias) or hold a NaN or infinity. The check costs
        one small all_gather before the exchange, so a bad rank fails everywhere instead of leaving the other
        ranks waiting.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_chunk_size(chunk_size, mode)
    if mode != "local" and not dist.is_initialized():
        raise ValueError(f"mode={mode!r} needs an initialised torch.distributed process group")
    if mode != "local" and group is None:
        group = dist.group.WORLD
    sizes = _batch_sizes(image_embeds, text_embeds, logit_scale, logit_bias, group)
    with _without_autocast(image_embeds.device):
        loss = _loss_sum(image_embeds, text_embeds, logit_scale, logit_bias, mode, chunk_size, group, sizes)
        loss = loss / sum(sizes)
        return _SumOverRanks.apply(loss, group) if len(sizes) > 1 else loss


def _loss_sum(x, y, logit_scale, logit_bias, mode, chunk, group, sizes) -> torch.Tensor:
    """Sum of the pair losses of this rank's images against the global batch's texts."""
    if mode == "all_gather" and len(sizes) > 1:
        rank = dist.get_rank(group)
        texts = _AllGather.apply(y, group, sizes)
        return _naive_nll_sum(x, texts, logit_scale, logit_bias, sum(sizes[:rank]))
    if chunk is None and mode != "ring":
        return _naive_nll_sum(x, y, logit_scale, logit_bias, 0)
    return _BlockwiseLoss.apply(x, y, logit_scale, logit_bias, _Ring(group, sizes), chunk)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _without_autocast(device: torch.device):
    return torch.autocast(device.type, enabled=False)


def _negate_positives_(t: torch.Tensor, positives: int | None) -> torch.Tensor:
    """Multiply `t` in place by minus the labels: negate the positive pairs, which lie on the diagonal with
    offset `positives` (none if None), and keep the rest. Flipping signs builds no label matrix."""
    if positives is not None:
        t.diagonal(positives).neg_()
    return t


def _times_labels_(logits: torch.Tensor, positives: int | None) -> torch.Tensor:
    """Multiply `logits` in place by the labels: +1 on the positive pairs, -1 everywhere else."""
    return _negate_positives_(logits.neg_(), positives)


def _scaled(x: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    dtype = _compute_dtype(x)
    return x.to(dtype) * logit_scale.to(dtype).exp()


def _logits(scaled_images: torch.Tensor, texts: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.addmm(bias, scaled_images, texts.to(scaled_images.dtype).T)


def _naive_nll_sum(x, y, logit_scale, logit_bias, positives: int) -> torch.Tensor:
    """All of this rank's logits at once, differentiated by autograd (which keeps them for backward)."""
    sx = _scaled(x, logit_scale)
    logits = _logits(sx, y, logit_bias.to(sx.dtype))
    return -F.logsigmoid(_times_labels_(logits, positives)).sum()


class _Images(NamedTuple):
    """This rank's images with what their logits need: the log temperature, the bias (in the compute dtype)
    and the tile size (None: whole blocks)."""

    embeds: torch.Tensor
    logit_scale: torch.Tensor
    bias: torch.Tensor
    chunk: int | None

    def tiles(self, texts: torch.Tensor, positives: int | None) -> Iterator[tuple[slice, slice, int | None]]:
        """(image rows, text rows, the positives' diagonal within the tile) of each tile of logits."""
        rows, cols = self.chunk or max(len(self.embeds), 1), self.chunk or max(len(texts), 1)
        for i in range(0, len(self.embeds), rows):
            for j in range(0, len(texts), cols):
                yield slice(i, i + rows), slice(j, j + cols), None if positives is None else positives + i - j

    def tile(self, texts: torch.Tensor, rows: slice, cols: slice) -> tuple[torch.Tensor, ...]:
        """The scaled images, the texts and the logits of one tile. Scaling a tile's rows here rather than all
        images once keeps memory at the tile, for 1/chunk of the tile's matrix product in time."""
        sx = _scaled(self.embeds[rows], self.logit_scale)
        tile_texts = texts[cols].to(sx.dtype)
        return sx, tile_texts, _logits(sx, tile_texts, self.bias)


@torch.no_grad()
def _nll_sum(images: _Images, texts: torch.Tensor, positives: int | None) -> torch.Tensor:
    """Sum of -log sigmoid(l z) = softplus(-l z) over the logits of `images` against `texts`, tile by tile.

    softplus needs no sign flip of the whole tile and no buffer beside its output, unlike logsigmoid; it
    returns x itself past x = 20, which differs from log(1 + e^x) by under e^-20, below float32 resolution.
    """
    total = images.bias.new_zeros(())
    for rows, cols, diagonal in images.tiles(texts, positives):
        _, _, logits = images.tile(texts, rows, cols)
        total += F.softplus(_negate_positives_(logits, diagonal)).sum()
    return total


@torch.no_grad()
def _nll_backward_(images: _Images, texts, positives, grad, grad_sx, grad_texts) -> torch.Tensor:
    """Add `grad` times the gradient of `_nll_sum` w.r.t. the scaled images exp(t) x and the texts to
    `grad_sx` and `grad_texts`; return the gradient w.r.t. the bias. Recomputes each tile of logits."""
    grad_bias = images.bias.new_zeros(())
    for rows, cols, diagonal in images.tiles(texts, positives):
        sx, tile_texts, logits = images.tile(texts, rows, cols)
        # d/dz of -log sigmoid(l z) is -l sigmoid(-l z): exact even where sigmoid(l z) rounds to 1
        g = _negate_positives_(_negate_positives_(logits, diagonal).sigmoid_(), diagonal).mul_(grad)
        grad_bias += g.sum()
        grad_sx[rows].addmm_(g, tile_texts)
        grad_texts[cols].addmm_(g.T, sx)
    return grad_bias


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
    logits, each carrying the gradient its visits add to it. With a ring of one process this is the
    memory-bounded loss of the local batch.
    """

    @staticmethod
    def forward(ctx, image_embeds, text_embeds, logit_scale, logit_bias, ring: _Ring, chunk: int | None):
        ctx.save_for_backward(image_embeds, text_embeds, logit_scale, logit_bias)
        ctx.ring, ctx.chunk = ring, chunk
        images = _Images(image_embeds, logit_scale, logit_bias.to(_compute_dtype(image_embeds)), chunk)
        total = _nll_sum(images, text_embeds, 0)  # own texts: the only block with positives
        flows = [(text_embeds,)] * 2
        for step in range(1, ring.steps + 1):
            flows = ring.shift(step, flows)
            for (texts,) in flows:
                total += _nll_sum(images, texts, None)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, y, logit_scale, logit_bias = ctx.saved_tensors
        ring, dtype = ctx.ring, _compute_dtype(x)
        with _without_autocast(x.device):
            images = _Images(x, logit_scale, logit_bias.to(dtype), ctx.chunk)
            grad_sx, grad_y = torch.zeros_like(x, dtype=dtype), torch.zeros_like(y, dtype=dtype)
            grad_bias = _nll_backward_(images, y, 0, grad, grad_sx, grad_y)
            # Texts set off bare; the first rank they reach starts their gradient, later ones add to it.
            carried = [(y,)] * 2
            for step in range(1, ring.steps + 1):
                for i, (texts, *carried_grad) in enumerate(ring.shift(step, carried)):
                    grad_texts = carried_grad[0] if carried_grad else torch.zeros_like(texts, dtype=dtype)
                    grad_bias += _nll_backward_(images, texts, None, grad, grad_sx, grad_texts)
                    carried[i] = (texts, grad_texts)
            for g in ring.send_home([g for _, g in carried[: ring.directions(1)]]):
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
        )


class _AllGather(torch.autograd.Function):
    """Every rank's texts in rank order; backward reduce-scatters the gradient back to the ranks."""

    @staticmethod
    def forward(ctx, texts, group, sizes: list[int]):
        ctx.group, ctx.sizes = group, sizes
        # Collectives want equal shapes: pad every rank's block to the largest and strip the padding after.
        parts = [texts.new_empty((max(sizes), texts.shape[1])) for _ in sizes]
        dist.all_gather(parts, _pad_rows(texts, max(sizes)), group=group)
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

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


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return F.pad(t, (0, 0, 0, rows - len(t)))


def _batch_sizes(x, y, logit_scale, logit_bias, group: dist.ProcessGroup | None) -> list[int]:
    """Every rank's batch size, once all ranks' inputs are known to fit together.

    One small all_gather of each rank's shapes and a finiteness flag: a problem on any rank raises the same
    ValueError on all of them before the exchange, where a lone failing rank would leave the others waiting.
    """
    matrices = x.ndim == 2 and y.ndim == 2
    n_images, width_images = x.shape if matrices else (0, 0)
    n_texts, width_texts = y.shape if matrices else (0, 0)
    scalars = logit_scale.numel() == 1 and logit_bias.numel() == 1
    finite = torch.stack([t.isfinite().all() for t in (x, y, logit_scale, logit_bias)]).all()
    shapes = torch.tensor([matrices, n_images, n_texts, width_images, width_texts, scalars], device=x.device)
    stats = torch.cat([shapes, finite.view(1).long()])
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


def _input_problem(rows: list[list[int]]) -> str | None:
    """What is wrong with the ranks' inputs, described by `_batch_sizes`' statistics; None if nothing."""
    for rank, (matrices, n_images, n_texts, width_images, width_texts, scalars, finite) in enumerate(rows):
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
        if not finite:
            return f"non-finite values (NaN or infinity) in the loss inputs{where}"
    if sum(row[1] for row in rows) == 0:  # one rank may hold no pairs (all its images failed), not every one
        return "the batch is empty: no image-text pair on any rank"
    widths = [row[3] for row in rows]
    if len(set(widths)) > 1:
        return f"the ranks' embeddings must have one width; got widths {widths} on ranks 0..{len(rows) - 1}"
    return None
