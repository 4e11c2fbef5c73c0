"""The sigmoid loss on one process: the reference definition and the memory-bounded (chunked) form."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks
from torch.utils._python_dispatch import TorchDispatchMode

import siglip.core.loss
from _loss_cases import class_labels, global_batch, leaves, max_error, reference
from _reference import TINY
from siglip import SiglipConfig, SiglipModel, siglip_loss, sigmoid_loss
from siglip.core.loss import _Ring


def test_reference_is_the_labelled_sum_over_pairs():
    # By hand: the diagonal is positive, -log sigmoid(z) = softplus(-z); summed over all pairs, over 2 images.
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    expected = (F.softplus(-logits.diagonal()).sum() + F.softplus(torch.tensor([-1.0, 0.5])).sum()) / 2
    assert sigmoid_loss(logits).item() == pytest.approx(expected.item(), abs=1e-7)
    # transformers' formula with an explicit label matrix, bit for bit
    logits = torch.randn(9, 9, generator=torch.Generator().manual_seed(0)) * 5
    labels = 2 * torch.eye(9) - 1
    assert torch.equal(sigmoid_loss(logits), -F.logsigmoid(labels * logits).sum(dim=-1).mean())


def test_reference_dtype_and_shape():
    assert sigmoid_loss(torch.zeros(3, 3, dtype=torch.bfloat16)).dtype == torch.float32
    assert sigmoid_loss(torch.zeros(3, 3, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError, match="as many texts as images"):
        sigmoid_loss(torch.zeros(3, 4))


def test_model_return_loss_is_the_reference():
    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(**TINY)).eval()
    inputs = dict(input_ids=torch.randint(0, 128, (5, 16)), pixel_values=torch.randn(5, 3, 32, 32))
    out = model(**inputs, return_loss=True)
    assert torch.equal(out.loss, sigmoid_loss(out.logits_per_text))
    ours = siglip_loss(out.image_embeds, out.text_embeds, model.logit_scale, model.logit_bias, chunk_size=2)
    assert max_error(ours, out.loss) < 1e-5


def _assert_matches_reference(batch, chunk_size: int | None, tol: float, labels=None) -> None:
    ref_loss, ref_grads = reference(batch, labels)
    inputs = leaves(batch)
    loss = siglip_loss(*inputs, chunk_size=chunk_size, labels=labels)
    loss.backward()
    assert loss.dtype == batch[0].dtype
    # relative to the magnitude past 1: with many positives per row, the loss and dL/dt reach about 100
    assert max_error(loss, ref_loss) < tol * max(1.0, ref_loss.abs().item())
    for name, ours, theirs in zip(("images", "texts", "scale", "bias"), inputs, ref_grads, strict=True):
        assert max_error(ours.grad, theirs) < tol * max(1.0, theirs.abs().max().item()), name


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 16, 64, 1000])
@pytest.mark.parametrize("batch_size", [1, 7, 64, 130])
def test_chunked_matches_reference(batch_size, chunk_size):
    _assert_matches_reference(global_batch(batch_size, width=16), chunk_size, tol=1e-10)


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_float32(chunk_size):
    _assert_matches_reference(global_batch(130, width=32, dtype=torch.float32), chunk_size, tol=1e-5)


@pytest.mark.parametrize("classes", [1, 3, 10, None])
@pytest.mark.parametrize("chunk_size", [None, 3, 16, 1000])
@pytest.mark.parametrize("batch_size", [1, 7, 130])
def test_labels_match_the_label_matrix_reference(batch_size, chunk_size, classes):
    # One class (every pair positive) to one label per pair (shuffled, so positives are off the diagonal).
    labels = class_labels(batch_size, classes)
    _assert_matches_reference(global_batch(batch_size, width=16), chunk_size, tol=1e-10, labels=labels)


@pytest.mark.parametrize("chunk_size", [None, 3, 16])
def test_labels_signed_in_strips_that_do_not_divide(chunk_size, monkeypatch):
    # Strips of 7 elements: one row at a time of a 16-wide tile, 2 rows of a 3-wide one, 0 (so 1) of 130.
    monkeypatch.setattr(siglip.core.loss, "SIGN_STRIP", 7)
    labels = class_labels(130, 10)
    _assert_matches_reference(global_batch(130, width=16), chunk_size, tol=1e-10, labels=labels)


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_labels_float32(chunk_size):
    batch = global_batch(130, width=32, dtype=torch.float32)
    _assert_matches_reference(batch, chunk_size, tol=1e-5, labels=class_labels(130, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [None, 3, 16])
def test_unique_labels_are_bit_identical_to_no_labels(chunk_size, dtype):
    results = []
    for labels in (None, torch.arange(40), torch.arange(40, dtype=torch.int32) * 7 - 100):
        inputs = leaves(global_batch(40, width=16, dtype=dtype))
        loss = siglip_loss(*inputs, chunk_size=chunk_size, labels=labels)
        loss.backward()
        results.append((loss, *(t.grad for t in inputs)))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def test_labels_make_same_class_pairs_positive():
    # A different oracle from the reference: a class-sorted batch's labelled loss is a block-diagonal sum.
    images, texts, scale, bias = global_batch(6)
    logits = images @ texts.T * scale.exp() + bias
    positive = torch.block_diag(torch.ones(2, 2), torch.ones(4, 4)).bool()
    expected = (F.softplus(-logits[positive]).sum() + F.softplus(logits[~positive]).sum()) / 6
    loss = siglip_loss(images, texts, scale, bias, labels=torch.tensor([5, 5, -1, -1, -1, -1]), chunk_size=4)
    assert max_error(loss, expected) < 1e-12


@pytest.mark.parametrize("labels", [None, torch.tensor([0, 1, 0, 2, 2, 0, 1, 1, 0, 2, 2])])
def test_chunked_backward_against_finite_differences(labels):
    # An oracle independent of the reference: the hand-written backward against numerical derivatives.
    inputs = leaves(global_batch(11, width=4))
    assert torch.autograd.gradcheck(lambda *t: siglip_loss(*t, chunk_size=3, labels=labels), inputs)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_autocast_keeps_logits_in_float32(chunk_size):
    # bf16 embeddings under bf16 autocast give the float32 loss of the same values: a bf16 matmul would be off
    # by about 1e-2. Backward runs outside autocast, as PyTorch recommends.
    images, texts, scale, bias = global_batch(40, width=64, dtype=torch.float32)
    images, texts = leaves((images.bfloat16(), texts.bfloat16()))
    scale, bias = leaves((scale, bias))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = siglip_loss(images, texts, scale, bias, chunk_size=chunk_size)
    loss.backward()
    ref_loss, ref_grads = reference((images.float(), texts.float(), scale, bias))
    assert loss.dtype == torch.float32 and images.grad.dtype == torch.bfloat16
    assert max_error(loss, ref_loss) < 1e-5
    assert max_error(scale.grad, ref_grads[2]) < 1e-5 and max_error(bias.grad, ref_grads[3]) < 1e-5
    for ours, theirs in zip((images.grad, texts.grad), ref_grads[:2], strict=True):
        assert max_error(ours, theirs) <= theirs.abs().max().item() * 2**-7  # float32 ones rounded to bf16


def _saved_numels(chunk_size: int | None, batch) -> list[int]:
    numels = []

    def pack(t):
        numels.append(t.numel())
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        siglip_loss(*leaves(batch), chunk_size=chunk_size)
    return numels


def test_chunked_saves_only_the_inputs():
    batch = global_batch(64, width=4)
    assert max(_saved_numels(8, batch)) == 64 * 4  # the embeddings: O(b D)
    assert max(_saved_numels(None, batch)) == 64 * 64  # autograd keeps the b x b logits


class _LargestTensor(TorchDispatchMode):
    """The most elements any operation produces while the mode is on."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("labels", [None, class_labels(64, 4)])
@pytest.mark.parametrize(("chunk_size", "largest"), [(8, 64 * 2), (None, 64 * 64)])
def test_chunked_holds_one_tile_at_a_time(chunk_size, largest, labels):
    # b = 64, D = 2, chunk 8: a tile (64 elements) is smaller than the embeddings (128) and b x b is 4096.
    # Labels add a tile of signs, no larger tensor.
    inputs = leaves(global_batch(64, width=2))
    with _LargestTensor() as mode:
        siglip_loss(*inputs, chunk_size=chunk_size, labels=labels).backward()
    assert mode.largest == largest


def _ring_arrivals(world: int, rank: int, monkeypatch) -> tuple[int, list[int]]:
    """The ring's steps and the owners of the blocks that reach `rank`, with the exchange faked."""
    monkeypatch.setattr(dist, "get_rank", lambda group: rank)
    ring = _Ring(object(), [1] * world)
    arrivals = []

    def exchange(moves):
        arrivals.extend(owner % world for _, _, owner in moves)
        return [tensors for tensors, _, _ in moves]

    monkeypatch.setattr(ring, "_exchange", exchange)
    for step in range(1, ring.steps + 1):
        ring.shift(step, [(torch.zeros(1),)] * 2)
    return ring.steps, arrivals


@pytest.mark.parametrize("world", range(1, 10))
def test_ring_schedule_visits_every_rank_once(world, monkeypatch):
    for rank in range(world):
        steps, arrivals = _ring_arrivals(world, rank, monkeypatch)
        assert steps == math.ceil((world - 1) / 2)
        assert sorted(arrivals) == [r for r in range(world) if r != rank]


def _bad(**changes):
    images, texts, scale, bias = global_batch(4)
    inputs = dict(image_embeds=images, text_embeds=texts, logit_scale=scale, logit_bias=bias)
    return {**inputs, **changes}


@pytest.mark.parametrize(
    ("inputs", "options", "message"),
    [
        (_bad(text_embeds=torch.zeros(3, 8)), {}, "as many images as texts.* got 4 images and 3 texts"),
        (_bad(text_embeds=torch.zeros(4, 6)), {}, "one width; got 8 and 6"),
        (_bad(image_embeds=torch.zeros(4, 2, 4)), {}, "must be 2-D"),
        (
            _bad(image_embeds=torch.zeros(0, 8), text_embeds=torch.zeros(0, 8)),
            {},
            "the batch is empty: no image-text pair on any rank",
        ),
        (_bad(logit_scale=torch.zeros(2)), {}, "one value each"),
        (_bad(image_embeds=torch.full((4, 8), math.nan)), {}, "non-finite"),
        (_bad(logit_bias=torch.tensor([math.inf])), {}, "non-finite"),
        (_bad(), dict(mode="softmax"), "mode must be one of"),
        (_bad(), dict(chunk_size=0), "chunk_size must be a positive int"),
        (_bad(), dict(chunk_size=2.5), "chunk_size must be a positive int"),
        (_bad(), dict(mode="all_gather", chunk_size=4), "chunk_size bounds memory"),
        (_bad(), dict(mode="ring"), "needs an initialised torch.distributed process group"),
        (_bad(), dict(labels=torch.zeros(3, dtype=torch.long)), "one label per image-text pair; got 3 for 4"),
        (_bad(), dict(labels=torch.zeros(4)), "labels must be a vector of integers"),
        (_bad(), dict(labels=torch.zeros(4, 1, dtype=torch.long)), "labels must be a vector of integers"),
        (_bad(), dict(labels=torch.ones(4, dtype=torch.bool)), "labels must be a vector of integers"),
    ],
)
def test_bad_input_raises(inputs, options, message):
    with pytest.raises(ValueError, match=message):
        siglip_loss(**inputs, **options)
