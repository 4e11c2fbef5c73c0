"""The distributed sigmoid loss against the one-process loss of the whole batch, in gloo worlds of processes.

Each world size starts once and runs every case; its ranks report errors (or messages) that the tests below
then check case by case.
"""

from __future__ import annotations

import copy
import math
import multiprocessing
import re
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from _loss_cases import class_labels, global_batch, leaves, max_error, reference, reference_loss
from siglip import siglip_loss

WORLDS = (1, 2, 3, 4)
TOL = 1e-5
UNEVEN = (3, 6, 1, 5)  # per-rank batch sizes; chunks of 2 and 4 split them unevenly
EMPTY = (3, 0, 2, 5)  # a rank whose batch is empty (every image of its share failed to load)
MATCH_CASES = {
    "ring": dict(mode="ring"),
    "ring-uneven": dict(mode="ring", uneven=True),
    "ring-chunk2": dict(mode="ring", chunk_size=2),
    "ring-column-major": dict(mode="ring", column_major=True),
    "ring-chunk4-uneven": dict(mode="ring", chunk_size=4, uneven=True),
    "all_gather": dict(mode="all_gather"),
    "all_gather-uneven": dict(mode="all_gather", uneven=True),
    "ring-chunk4-uneven-float32": dict(mode="ring", chunk_size=4, uneven=True, dtype=torch.float32),
    "all_gather-float32": dict(mode="all_gather", dtype=torch.float32),
    "ring-empty-rank": dict(mode="ring", uneven="empty"),
    "ring-chunk2-empty-rank": dict(mode="ring", chunk_size=2, uneven="empty"),
    "all_gather-empty-rank": dict(mode="all_gather", uneven="empty"),
    "ring-chunk2-bf16-autocast": dict(mode="ring", chunk_size=2, uneven=True, autocast=True),
    # labels: 3 classes over the global batch, so every block of the ring holds positives
    "ring-labels": dict(mode="ring", labelled=True),
    "ring-chunk4-uneven-labels": dict(mode="ring", chunk_size=4, uneven=True, labelled=True),
    "ring-chunk2-empty-rank-labels": dict(mode="ring", chunk_size=2, uneven="empty", labelled=True),
    "all_gather-uneven-labels": dict(mode="all_gather", uneven=True, labelled=True),
    "all_gather-empty-rank-labels": dict(mode="all_gather", uneven="empty", labelled=True),
    "ring-chunk4-uneven-float32-labels": dict(
        mode="ring", chunk_size=4, uneven=True, dtype=torch.float32, labelled=True
    ),
}
# (mode, chunk size) whose loss and gradients with unique labels must equal those without, bit for bit
UNIQUE_LABEL_CASES = (("ring", None), ("ring", 2), ("all_gather", None))
# Which rank spoils its (images, texts, labels), how, and what every rank must then be told.
ERROR_CASES = {
    "batch-mismatch": (
        -1,
        lambda i, t, c: (i, t[:3], c),
        "as many images as texts.* 4 images and 3 texts on rank {last}",
    ),
    "width-mismatch": (-1, lambda i, t, c: (i[:, :6], t[:, :6], c), r"one width; got widths \[8, .*6\]"),
    "non-finite": (
        0,
        lambda i, t, c: (i, t.index_fill(1, torch.tensor([2]), math.nan), c),
        "non-finite .* on rank 0",
    ),
    "labels-on-one-rank": (
        -1,
        lambda i, t, c: (i, t, torch.arange(4)),
        r"labels must be given on every rank or on none; given on ranks \[{last}\]",
    ),
}


def _sizes(world: int, uneven: bool | str) -> list[int]:
    if uneven == "empty":
        return list(EMPTY[:world])
    return list(UNEVEN[:world]) if uneven else [4] * world


def _own(sizes: list[int], rank: int) -> slice:
    return slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))


def _match(
    rank,
    world,
    mode,
    chunk_size=None,
    uneven=False,
    dtype=torch.float64,
    autocast=False,
    column_major=False,
    labelled=False,
) -> dict:
    """Errors of this rank's loss and (DDP-averaged) gradients against the whole batch's on one process."""
    sizes = _sizes(world, uneven)
    batch = global_batch(sum(sizes), dtype=torch.float32 if autocast else dtype)
    labels = class_labels(sum(sizes), 3) if labelled else None
    if autocast:  # bf16 embeddings from the towers, float32 parameters
        batch = (batch[0].bfloat16(), batch[1].bfloat16(), *batch[2:])
    ref_loss, ref_grads = reference(
        tuple(t.to(torch.promote_types(t.dtype, torch.float32)) for t in batch), labels
    )
    own = _own(sizes, rank)
    images, texts, scale, bias = inputs = leaves((batch[0][own], batch[1][own], *batch[2:]))
    own_labels = None if labels is None else labels[own]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        sent = texts.T.contiguous().T if column_major else texts  # send/receive want contiguous tensors
        loss = siglip_loss(images, sent, scale, bias, mode=mode, chunk_size=chunk_size, labels=own_labels)
    loss.backward()
    # What DDP makes of it: the mean over ranks. The embeddings' gradients are each rank's alone (W x the
    # reference); the scalars' are shares of it.
    scalars = torch.cat([scale.grad, bias.grad]) / world
    dist.all_reduce(scalars)
    grads = (images.grad / world, texts.grad / world, *scalars.split(1))
    refs = (ref_grads[0][own], ref_grads[1][own], *ref_grads[2:])
    # float32 errors relative to the magnitude past 1 (with labels, the loss and dL/dt reach about 100)
    errors = {"loss": max_error(loss, ref_loss) / max(1.0, _largest(ref_loss))}
    for name, ours, theirs, t in zip(("images", "texts", "scale", "bias"), grads, refs, inputs, strict=True):
        # bf16 gradients are float32 ones rounded (W times larger, before the mean): allow one bf16 epsilon
        tol = _largest(theirs) * 2**-7 if t.dtype == torch.bfloat16 else TOL * max(1.0, _largest(theirs))
        errors[name] = max_error(ours, theirs) / tol * TOL
    return errors


def _largest(t: torch.Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.0


def _unique_labels_bit_identical(rank, world) -> dict[str, bool]:
    """Whether the loss and gradients with unique (global) labels equal those without labels exactly."""
    sizes = _sizes(world, uneven=True)
    batch = global_batch(sum(sizes), dtype=torch.float32)
    own = _own(sizes, rank)
    identical = {}
    for mode, chunk_size in UNIQUE_LABEL_CASES:
        results = []
        for labels in (None, torch.arange(sum(sizes))[own] * 3 + 1):
            inputs = leaves((batch[0][own], batch[1][own], *batch[2:]))
            loss = siglip_loss(*inputs, mode=mode, chunk_size=chunk_size, labels=labels)
            loss.backward()
            results.append((loss, *(t.grad for t in inputs)))
        identical[f"{mode}-chunk{chunk_size}"] = all(map(torch.equal, *results))
    return identical


class _TwoTowers(nn.Module):
    """A stand-in for SiglipModel: linear towers, normalised embeddings, learnable scale and bias."""

    def __init__(self):
        super().__init__()
        self.vision, self.text = nn.Linear(5, 8), nn.Linear(7, 8)
        self.logit_scale = nn.Parameter(torch.tensor([math.log(10.0)]))
        self.logit_bias = nn.Parameter(torch.tensor([-2.0]))

    def forward(self, pixels, tokens):
        return F.normalize(self.vision(pixels), dim=-1), F.normalize(self.text(tokens), dim=-1)


def _ddp(rank, world) -> dict:
    """Errors of every parameter's gradient under DDP against the whole batch's on one process."""
    sizes = _sizes(world, uneven=True)
    torch.manual_seed(0)
    model = _TwoTowers().double()
    pixels, tokens = torch.randn(sum(sizes), 5).double(), torch.randn(sum(sizes), 7).double()
    ddp, own, errors = DistributedDataParallel(model), _own(sizes, rank), {}
    for labels in (None, class_labels(sum(sizes), 3)):
        single = copy.deepcopy(model)
        images, texts = single(pixels, tokens)
        reference_loss(texts @ images.T * single.logit_scale.exp() + single.logit_bias, labels).backward()
        for mode, chunk_size in (("ring", 3), ("all_gather", None)):
            ddp.zero_grad()
            images, texts = ddp(pixels[own], tokens[own])
            siglip_loss(
                images, texts, model.logit_scale, model.logit_bias, mode=mode, chunk_size=chunk_size,
                labels=None if labels is None else labels[own],
            ).backward()  # fmt: skip
            for (name, ours), theirs in zip(model.named_parameters(), single.parameters(), strict=True):
                key = f"{mode}{'-labels' if labels is not None else ''}:{name}"
                errors[key] = max_error(ours.grad, theirs.grad)
    return errors


def _error_message(rank, world, case: str) -> str:
    """What this rank raises when one rank spoils its input as ERROR_CASES[case] says."""
    images, texts, scale, bias = global_batch(4)
    labels = None
    spoiler, spoil, _ = ERROR_CASES[case]
    if rank == spoiler % world:
        images, texts, labels = spoil(images, texts, labels)
    try:
        siglip_loss(images, texts, scale, bias, mode="ring", labels=labels)
    except ValueError as e:
        return str(e)
    return "no error"


def _worker(rank: int, world: int, store: str, results: str) -> None:
    # A timeout turns a hang into an error, so a broken exchange fails the test instead of stalling CI.
    dist.init_process_group(
        "gloo", f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        # Errors first: the cases after them show that the group still works.
        report = {case: _error_message(rank, world, case) for case in ERROR_CASES if world > 1}
        report |= {case: _match(rank, world, **options) for case, options in MATCH_CASES.items()}
        report["ddp"] = _ddp(rank, world)
        report["unique-labels"] = _unique_labels_bit_identical(rank, world)
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(report, gathered)
        if rank == 0:
            torch.save(gathered, results)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=WORLDS, ids=lambda world: f"world{world}")
def reports(request, tmp_path_factory) -> list[dict]:
    """Every rank's report for one spawned world."""
    world, tmp = request.param, tmp_path_factory.mktemp(f"world{request.param}")
    # A fork server imports this module (so torch) once and every rank of every world forks from it:
    # spawning would import torch anew in each rank, as DDP would torch._dynamo (seconds apiece), and forking
    # pytest itself is unsafe once it has run threads.
    multiprocessing.get_context("forkserver").set_forkserver_preload([__name__, "torch._dynamo"])
    args = (world, str(tmp / "store"), str(tmp / "results.pt"))
    mp.start_processes(_worker, args=args, nprocs=world, start_method="forkserver")
    return torch.load(tmp / "results.pt")


def _over_tolerance(reports: list[dict], case: str) -> dict:
    return {
        (rank, name): error
        for rank, report in enumerate(reports)
        for name, error in report[case].items()
        if not error < TOL
    }


@pytest.mark.parametrize("case", MATCH_CASES)
def test_loss_and_gradients_match_the_whole_batch(reports, case):
    assert not _over_tolerance(reports, case)


def test_ddp_gradients_are_the_whole_batch_gradients(reports):
    assert not _over_tolerance(reports, "ddp")


@pytest.mark.parametrize("case", [f"{mode}-chunk{chunk}" for mode, chunk in UNIQUE_LABEL_CASES])
def test_unique_labels_are_bit_identical_to_no_labels(reports, case):
    assert all(report["unique-labels"][case] for report in reports)


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_input_raises_on_every_rank(reports, case):
    world = len(reports)
    if world == 1:
        pytest.skip("needs other ranks")
    messages = {report[case] for report in reports}
    assert len(messages) == 1, messages
    assert re.search(ERROR_CASES[case][2].format(last=world - 1), messages.pop())
