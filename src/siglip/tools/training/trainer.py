"""The training loop: SigLIP's sigmoid loss on one process or many (torchrun, DDP), with exact resumption.

    siglip train --data pairs.csv --model google/siglip-base-patch16-224 --output-dir runs/ft
    torchrun --nproc-per-node 4 -m siglip train --data 'shards/{000000..000099}.tar' ...

Each optimizer step sees one global batch of `batch_size` pairs, cut into `grad_accum` micro-batches (each
its own sigmoid-loss batch: accumulation saves memory but sees fewer negatives per pair), each split across
the processes. The loss of a micro-batch is that of the whole micro-batch over all ranks (`siglip_loss`, ring
or all-gather), so N processes train exactly as one process would.

Labels: where the data says which pairs belong together, the loss counts every image-text pair of one label as
positive instead of as a false negative (`siglip_loss(labels=...)`): the class of class-folder data (unless
`--no-class-labels`), a pairs file's `--group-column`, or, with `--group-identical-captions`, captions whose
tokens are identical.

The loop is shared by the kinds of training (`Task`): this module's `Contrastive` (the sigmoid loss, the
default) and `siglip.tools.training.classify.Classify` (`task="classify"`: an image classifier on class folders,
a linear probe or a full fine-tune). Each brings its data, model, loss, logged values and evaluation.

Checkpoints (`output_dir/checkpoints/step-XXXXXXXX/`) are complete model directories (`from_pretrained`
loads them) plus `training_state.pt` (optimizer, scheduler, random states, data position). They are written
under a temporary name and renamed when complete, and `output_dir/checkpoints/latest` names the newest; a
run killed at any moment resumes (`--resume`) from the last complete one and continues as if uninterrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from ...core.auto import (
    AutoConfig,
    AutoModel,
    AutoProcessor,
    Processor,
    Siglip2ImageProcessor,
    TwoTowerModel,
)
from ...core.cpu import prepare_cpu_compute
from ...core.loss import check_chunk_size, siglip_loss
from ...core.two_tower.processing import fixed_length_ids
from ...core.two_tower.torch_resize import BACKENDS
from ...errors import DataError, UsageError
from ..embeddings.embedder import Embedder, configure_images
from ..embeddings.options import ModelOptions
from ..embeddings.precision import TRAINING_PRECISIONS, Precision, resolve_precision
from ..evaluation import evaluate_zeroshot
from ..inputs.data import Batch, empty_inputs
from ..search.store import replace_atomically
from ..values import Choice, Number, whole
from ..zeroshot import DEFAULT_TEMPLATE, check_templates
from .data import (
    BatchLayout,
    ClassFolderDataset,
    WebDatasetSource,
    batches_per_epoch,
    build_source,
    make_loader,
    missing_files,
)

logger = logging.getLogger("siglip")
STATE_FILE = "training_state.pt"
TASKS = ("contrastive", "classify")


@dataclass
class TrainConfig:
    """Everything a training run needs; `siglip train --help` lists the same fields as options."""

    data: str = field(
        metadata={"help": "pairs file (.csv/.tsv/.jsonl), folder of class folders, or .tar shards"}
    )
    output_dir: str = field(metadata={"help": "where checkpoints, metrics.jsonl and the final model go"})
    task: str = field(
        default="contrastive",
        metadata={
            "value": Choice(TASKS),
            "help": "contrastive (the sigmoid loss on image-text pairs) or classify (an image classifier, "
            "SiglipForImageClassification, on a folder of class folders; see siglip.tools.training.classify)",
        },
    )
    probe: str | None = field(
        default=None,
        metadata={
            "value": Choice(("linear",)),
            "help": "task classify: linear trains only the linear head on the frozen image tower's features "
            "(computed once); unset: fine-tune the whole classifier",
        },
    )
    val_fraction: float = field(
        default=0.1,
        metadata={
            "value": Number(0, 1),
            "help": "task classify without --eval-data: the fraction of each class's images held out for "
            "validation (0: none)",
        },
    )
    model: str | None = field(
        default=None, metadata={"help": "checkpoint to start from (directory, hub id or bundled name)"}
    )
    config: str | None = field(
        default=None, metadata={"help": "config.json (or its directory) to train from scratch instead"}
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={
            "help": "re-initialise (and train) the weights of --model whose shape differs from its config.json"
        },
    )
    processor: str | None = field(
        default=None, metadata={"help": "tokenizer/preprocessor files (default: those of --model)"}
    )
    templates: list[str] = field(
        default_factory=lambda: ["a photo of a {}."], metadata={"help": "caption templates for class folders"}
    )
    image_column: str = field(default="image", metadata={"help": "pairs-file column with image paths"})
    caption_column: str = field(default="caption", metadata={"help": "pairs-file column with captions"})
    class_labels: bool = field(
        default=True,
        metadata={
            "help": "class folders: every pair of one class is a positive, not only the image's caption"
        },
    )
    group_column: str | None = field(
        default=None, metadata={"help": "pairs-file column whose equal values make pairs positives"}
    )
    group_identical_captions: bool = field(
        default=False,
        metadata={"help": "pairs and shards: captions that tokenize identically make pairs positives"},
    )
    batch_size: int = field(
        default=256, metadata={"value": whole(1), "help": "global batch per optimizer step, all processes"}
    )
    grad_accum: int = field(
        default=1, metadata={"value": whole(1), "help": "micro-batches per step (each its own loss batch)"}
    )
    epochs: float = field(
        default=1.0,
        metadata={"value": Number(0, above=True), "help": "length of the run in passes over the data"},
    )
    steps: int | None = field(
        default=None, metadata={"value": whole(1), "help": "length in optimizer steps (overrides --epochs)"}
    )
    lr: float = field(
        default=1e-4, metadata={"value": Number(0, above=True), "help": "peak learning rate (AdamW)"}
    )
    warmup_steps: int = field(
        default=0, metadata={"value": whole(0), "help": "linear warm-up steps, then cosine decay to 0"}
    )
    weight_decay: float = field(
        default=0.1, metadata={"value": Number(0), "help": "AdamW decay (not on norms, biases, logits)"}
    )
    beta2: float = field(default=0.95, metadata={"value": Number(0, 1), "help": "AdamW beta2"})
    grad_clip: float = field(
        default=1.0, metadata={"value": Number(0), "help": "clip the gradient norm to this (0: off)"}
    )
    precision: str = field(
        default="auto",
        metadata={
            "value": Choice(TRAINING_PRECISIONS),
            "help": "fp32, bf16-autocast (float32 weights, bf16 products), bf16 (bf16 weights) or auto "
            "(bf16-autocast on hardware with bf16 units, else fp32); see siglip.tools.embeddings.precision",
        },
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute layers in backward"})
    lock_image: bool = field(default=False, metadata={"help": "freeze the image tower (LiT)"})
    lock_text: bool = field(default=False, metadata={"help": "freeze the text tower"})
    loss: str = field(
        default="all_gather",
        metadata={"value": Choice(("all_gather", "ring")), "help": "distributed loss: all_gather or ring"},
    )
    loss_chunk_size: int | None = field(
        default=None,
        metadata={"value": whole(1), "help": "bound the loss memory to chunk x chunk logits at a time"},
    )
    workers: int = field(
        default=2, metadata={"value": whole(0), "help": "data loading processes per training process"}
    )
    seed: int = field(default=0, metadata={"help": "seed for initialisation, data order and captions"})
    log_every: int = field(
        default=10, metadata={"value": whole(1), "help": "steps between metrics.jsonl lines"}
    )
    save_every: int = field(
        default=500, metadata={"value": whole(0), "help": "steps between checkpoints (0: only at the end)"}
    )
    keep_checkpoints: int = field(
        default=2, metadata={"value": whole(1), "help": "checkpoints kept (older ones are deleted)"}
    )
    eval_data: str | None = field(
        default=None,
        metadata={
            "aliases": ("--val",),
            "help": "folder of class folders for evaluation during training (zero-shot; task classify: the "
            "classifier's validation set, evaluated at the end too)",
        },
    )
    eval_every: int = field(
        default=0, metadata={"value": whole(0), "help": "steps between zero-shot evaluations (0: off)"}
    )
    eval_templates: list[str] = field(
        default_factory=lambda: [DEFAULT_TEMPLATE], metadata={"help": "prompt templates of the evaluation"}
    )
    max_num_patches: int | None = field(
        default=None,
        metadata={
            "value": whole(1, Siglip2ImageProcessor.MAX_NUM_PATCHES),
            "help": "SigLIP 2 NaFlex models: patches per image (default: the checkpoint's)",
        },
    )
    max_image_pixels: int | None = field(
        default=None,
        metadata={
            "value": whole(1),
            "help": "image files with more pixels are refused as possible decompression bombs (default: "
            "Pillow's limit, about 89 million)",
        },
    )
    image_backend: str | None = field(
        default=None,
        metadata={
            "value": Choice(BACKENDS),
            "help": "image preprocessing: pil (transformers' PIL processors) or torch (transformers 5's "
            "torchvision processors); unset: the processor's own",
        },
    )
    max_bad_fraction: float = field(
        default=0.01,
        metadata={
            "value": Number(0, 1),
            "help": "stop when more images than this fraction are missing or unreadable",
        },
    )
    resume: bool = field(default=False, metadata={"help": "continue from output_dir's latest checkpoint"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # each value against its field's rule (the CLI parses by the same)
            value = getattr(self, f.name)
            if "value" in f.metadata and value is not None:
                f.metadata["value"].check(value, f.name)
        if (self.model is None) == (self.config is None):
            raise UsageError(
                "pass exactly one of model (a checkpoint to start from) or config (from scratch)"
            )
        if self.batch_size % self.grad_accum:
            raise UsageError(
                f"batch_size {self.batch_size} must be a positive multiple of grad_accum {self.grad_accum}"
            )
        if self.config is not None and self.ignore_mismatched_sizes:
            raise UsageError("ignore_mismatched_sizes applies to the weights of model; config trains from scratch, "
                             "with no weights to load")  # fmt: skip
        if self.config is not None and self.processor is None:
            raise UsageError("training from a config needs processor: a directory with the tokenizer and "
                             "image-processor files (spiece.model, preprocessor_config.json, ...)")  # fmt: skip
        if self.lock_image and self.lock_text:
            raise UsageError("lock_image and lock_text together leave nothing to train")
        check_chunk_size(self.loss_chunk_size, self.loss, "loss_chunk_size")
        check_templates(self.templates)
        check_templates(self.eval_templates)
        if self.group_column is not None and self.group_identical_captions:
            raise UsageError("pass one of group_column or group_identical_captions: each labels the pairs")
        if self.eval_every and not (self.eval_data or (self.task == "classify" and self.val_fraction)):
            raise UsageError("eval_every needs eval_data: a folder with one sub-folder of images per class")
        if self.task == "classify":
            if self.lock_image or self.lock_text:
                raise UsageError("task classify has no text tower; to train only its head on a frozen image "
                                 "tower, pass probe=linear instead of lock_image/lock_text")  # fmt: skip
        elif self.probe is not None:
            raise UsageError("probe trains a classifier's head: it needs task classify")


# --- processes -----------------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextmanager
def _distributed() -> Iterator[_Dist]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPU), or run alone.

    A group this function created is destroyed on the way out: left to the interpreter's exit, gloo's
    threads can be torn down while still joinable, and the process aborts after a finished run.
    `torch.distributed.nn` is imported before the group exists: DistributedDataParallel imports it, and
    imported later its functions' defaults (`group=group.WORLD`) would hold the group, which would then
    outlive `destroy_process_group` and be torn down at the interpreter's exit after all.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    created = world > 1 and not dist.is_initialized()
    if created:
        importlib.import_module("torch.distributed.nn")  # (see above)
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield _Dist(dist.get_rank() if world > 1 else 0, world, device)
    finally:
        if created:
            dist.destroy_process_group()


class _Towers(nn.Module):
    """What DDP wraps: both towers to normalised embeddings (the loss uses the model's logit parameters)."""

    def __init__(self, model: TwoTowerModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, image_inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_images(**image_inputs), self.model.encode_texts(input_ids)


def _param_groups(model: TwoTowerModel, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay matrices and embeddings; no decay on norms, biases and the logit parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or name in ("logit_scale", "logit_bias")
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# --- checkpoints -----------------------------------------------------------------------------------------
def _checkpoint_root(config: TrainConfig) -> Path:
    return Path(config.output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = Path(output_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def _save_checkpoint(
    config: TrainConfig, model: TwoTowerModel, processor: Processor, state: dict[str, Any]
) -> Path:
    """Write a checkpoint atomically: a temporary folder renamed when complete, then the `latest` pointer."""
    root = _checkpoint_root(config)
    name = f"step-{state['step']:08d}"
    final = root / name
    if not (final / STATE_FILE).is_file():  # (a finished run resumed saves its last step again: keep it)
        temporary = root / f".{name}.partial"
        shutil.rmtree(temporary, ignore_errors=True)
        model.save_pretrained(temporary)
        processor.save_pretrained(temporary)
        torch.save(state, temporary / STATE_FILE)
        _fsync(*temporary.iterdir(), temporary)
        shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover of the same step
        os.replace(temporary, final)
    pointer = root / ".latest.partial"
    pointer.write_text(name + "\n")
    _fsync(pointer)
    os.replace(pointer, root / "latest")
    _fsync(root)  # the renames themselves
    older = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name < name)
    for old in (
        older[: max(0, len(older) - (config.keep_checkpoints - 1))] if config.keep_checkpoints > 0 else []
    ):
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync(*paths: Path) -> None:
    """Flush files (and folders, whose entries record renames) to the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _random_states() -> dict[str, Any]:
    """Every random generator's state, as plain tensors and numbers (loadable with weights_only=True)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: dict[str, Any]) -> None:
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# --- the run -------------------------------------------------------------------------------------------
def _build_model(config: TrainConfig, resume_from: Path | None) -> TwoTowerModel:
    if resume_from is not None:
        return AutoModel.from_pretrained(resume_from)
    if config.model is not None:
        return AutoModel.from_pretrained(config.model, ignore_mismatched_sizes=config.ignore_mismatched_sizes)
    return AutoModel.from_config(AutoConfig.from_pretrained(config.config) if Path(config.config).is_dir()
                                 else AutoConfig.from_json_file(config.config))  # fmt: skip


def _freeze(model: TwoTowerModel, config: TrainConfig) -> None:
    for tower, locked in ((model.vision_model, config.lock_image), (model.text_model, config.lock_text)):
        for param in tower.parameters():
            param.requires_grad_(not locked)


def _source(config: TrainConfig, processor: Processor, layout: BatchLayout) -> Dataset | WebDatasetSource:
    source = build_source(
        config.data,
        processor.image_processor,
        templates=config.templates,
        layout=layout,
        image_column=config.image_column,
        caption_column=config.caption_column,
        group_column=config.group_column,
    )
    missing, checked = missing_files(source)
    if missing:
        message = f"{len(missing)} of {checked} image files are missing (e.g. {missing[:3]})"
        if len(missing) > config.max_bad_fraction * checked:
            raise DataError(f"{message}: more than max_bad_fraction={config.max_bad_fraction}")
        logger.warning("%s; they are skipped", message)
    return source


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


class _Metrics:
    """metrics.jsonl on the main process; on resume, lines after the resumed step are dropped."""

    def __init__(self, path: Path, resumed_step: int, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            if lines and not _is_json(lines[-1]):
                lines.pop()  # cut short (a full disk, a kill mid-write): its step is logged again
            kept = "".join(ln + "\n" for ln in lines if json.loads(ln).get("step", 0) <= resumed_step)
            replace_atomically(path, lambda tmp: tmp.write_text(kept))  # killed here: the old lines stay

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _start(config: TrainConfig, output: Path) -> Path | None:
    """The checkpoint to resume from (None: a fresh start); refuses to mix a fresh run into an old one's."""
    if config.resume:
        found = latest_checkpoint(output)
        if found is None:
            logger.warning("--resume: no checkpoint in %s yet; starting from the beginning", output)
        return found
    if any(_checkpoint_root(config).glob("step-*")):
        raise DataError(
            f"{output} already holds checkpoints of a run: pass --resume to continue it, or another --output-dir"
        )
    return None


class Task:
    """What one kind of training adds to the shared loop (checkpoints, resumption, schedule, metrics): its
    data, its model, the forward and backward of a batch, what it logs and how it evaluates.

    `source` is read by `make_loader` in global batches of `Sample`s (their `label`s travel with them).
    """

    source: Dataset | WebDatasetSource
    evaluates_at_end = False  # evaluate after the last step even without eval_every

    def build_model(self, resume_from: Path | None) -> nn.Module:
        """The model to train (from the checkpoint `resume_from` when resuming), its frozen parts frozen."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, dist_: _Dist, precision: Precision) -> None:
        """Work on the model put on its device before the first step (default: none)."""

    def step(self, model: nn.Module, batch: Batch, dist_: _Dist, precision: Precision) -> float:
        """Forward and backward of this rank's share of one global batch; returns the mean loss."""
        raise NotImplementedError

    def log(self, model: nn.Module) -> dict[str, float]:
        """Values of the model for a metrics.jsonl line (default: none)."""
        return {}

    def evaluate(self, model: nn.Module, dist_: _Dist) -> dict[str, float]:
        """Metrics on the evaluation data, for a metrics.jsonl line (main process; the others wait)."""
        raise NotImplementedError


class Contrastive(Task):
    """Image-caption pairs, class folders or shards with the sigmoid loss (`siglip train`'s default task)."""

    def __init__(self, config: TrainConfig, processor: Processor, layout: BatchLayout) -> None:
        self.config, self.processor = config, processor
        self.source = _source(config, processor, layout)
        self.labelled = config.group_column is not None or (
            isinstance(self.source, ClassFolderDataset) and config.class_labels
        )
        self.towers: nn.Module | None = None

    def build_model(self, resume_from: Path | None) -> nn.Module:
        model = _build_model(self.config, resume_from)
        _freeze(model, self.config)
        return model

    def prepare(self, model: nn.Module, dist_: _Dist, precision: Precision) -> None:
        self.towers = _Towers(model)
        if dist_.world > 1:
            self.towers = nn.parallel.DistributedDataParallel(
                self.towers, device_ids=[dist_.device.index] if dist_.device.type == "cuda" else None
            )

    def step(self, model: nn.Module, batch: Batch, dist_: _Dist, precision: Precision) -> float:
        return _train_step(self.config, self.towers, model, self.processor, batch, dist_, precision,
                           self.labelled)  # fmt: skip

    def log(self, model: nn.Module) -> dict[str, float]:
        return {"logit_scale": model.logit_scale.exp().item(), "logit_bias": model.logit_bias.item()}

    def evaluate(self, model: nn.Module, dist_: _Dist) -> dict[str, float]:
        return _evaluate(self.config, model, self.processor, dist_)


# The tasks other than the contrastive one, by name: each registers itself from its own module (classify.py,
# imported by the package), which builds on this loop; the loop imports none of them.
TASKS: dict[str, Callable[[TrainConfig, Processor, BatchLayout, _Dist], Task]] = {}


def _task(config: TrainConfig, processor: Processor, layout: BatchLayout, dist_: _Dist) -> Task:
    if config.task == "contrastive":
        return Contrastive(config, processor, layout)
    return TASKS[config.task](config, processor, layout, dist_)


def train(config: TrainConfig) -> Path:
    """Run the training `config` describes; returns the directory of the final model (`output_dir/model`)."""
    with _distributed() as dist_:
        return _train(config, dist_)


def _train(config: TrainConfig, dist_: _Dist) -> Path:
    output = Path(config.output_dir)
    resume_from = _start(config, output)
    torch.manual_seed(config.seed)
    processor = AutoProcessor.from_pretrained(resume_from or config.processor or config.model)
    configure_images(
        processor,
        config.model or config.config,
        ModelOptions(
            max_num_patches=config.max_num_patches,
            max_image_pixels=config.max_image_pixels,
            image_backend=config.image_backend,
        ),
    )
    layout = BatchLayout(config.batch_size, config.grad_accum, dist_.rank, dist_.world, config.seed)
    task = _task(config, processor, layout, dist_)  # the data is checked before the model loads
    batches_per_epoch(task.source, layout)
    if dist_.main:
        output.mkdir(parents=True, exist_ok=True)

    precision = resolve_precision(config.precision, dist_.device, training=True)
    model = task.build_model(resume_from).to(dist_.device, precision.weights).train()
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    task.prepare(model, dist_, precision)
    per_epoch = batches_per_epoch(task.source, layout)
    total_steps = config.steps or max(1, int(config.epochs * per_epoch))
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, config.beta2),
        fused=dist_.device.type == "cuda",
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config.warmup_steps, total_steps))
    state = {"step": 0, "seen": 0, "failed": 0}
    if resume_from is not None:
        saved = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        _set_random_states(saved["random"][min(dist_.rank, len(saved["random"]) - 1)])
        state = {k: saved[k] for k in ("step", "seen", "failed")}
        logger.info("resumed from %s at step %d", resume_from, state["step"])

    metrics = _Metrics(output / "metrics.jsonl", state["step"], dist_.main)
    bar = _progress(config, dist_, total_steps, state["step"])
    clock, window = time.perf_counter(), 0
    if dist_.device.type == "cpu":  # from here on (the model and a resumed state loaded, their peaks freed):
        prepare_cpu_compute()  # each step's activations reuse the last step's memory (3-5% a step)

    for step, batch in _batches(config, task.source, layout, state["step"], per_epoch, total_steps):
        loss = task.step(model, batch, dist_, precision)
        grad_norm = _optimizer_step(config, model, optimizer, scheduler)
        seen, failed = _global_counts(len(batch.loaded), len(batch.failed), dist_)
        state = {"step": step + 1, "seen": state["seen"] + seen, "failed": state["failed"] + failed}
        window += seen
        _check_failures(config, state, per_epoch, [s.source for s in batch.failed])
        record: dict[str, Any] = {}
        if state["step"] % config.log_every == 0 or state["step"] == total_steps:
            now = time.perf_counter()
            record = {
                "step": state["step"],
                "epoch": state["step"] / per_epoch,
                "loss": loss,
                "lr": scheduler.get_last_lr()[0],
                **task.log(model),
                "grad_norm": grad_norm,
                "samples_per_s": window / (now - clock),
                "failed_images": state["failed"],
            }
            clock, window = now, 0
        last = state["step"] == total_steps
        if (config.eval_every and state["step"] % config.eval_every == 0) or (last and task.evaluates_at_end):
            record = {"step": state["step"], **record, **task.evaluate(model, dist_)}
        if record:
            metrics.write(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if config.save_every and state["step"] % config.save_every == 0 and state["step"] < total_steps:
            _checkpoint(config, model, processor, optimizer, scheduler, state, dist_)

    if bar is not None:
        bar.close()
    final = output / "model"
    if dist_.main:
        model.save_pretrained(final)
        processor.save_pretrained(final)
    _checkpoint(config, model, processor, optimizer, scheduler, state, dist_)
    return final


def _batches(
    config: TrainConfig,
    source: Dataset | WebDatasetSource,
    layout: BatchLayout,
    first_step: int,
    per_epoch: int,
    total_steps: int,
) -> Iterator[tuple[int, Batch]]:
    """(step, this rank's share of the global batch) from `first_step` on, across epochs."""
    step = first_step
    while step < total_steps:
        epoch, start = divmod(step, per_epoch)
        loader = make_loader(source, layout, epoch=epoch, start=start, workers=config.workers)
        for batch in loader:
            yield step, batch
            step += 1
            if step >= total_steps:
                return


def _train_step(
    config: TrainConfig,
    towers: nn.Module,
    model: TwoTowerModel,
    processor: Processor,
    batch: Batch,
    dist_: _Dist,
    precision: Precision,
    labelled: bool,
) -> float:
    """Forward and backward of one global batch, micro-batch by micro-batch; returns the mean loss.

    Every rank runs every micro-batch, even one its share leaves empty (all its images failed, or a
    micro-batch smaller than the world): the loss and DDP communicate, so all ranks must take part.
    `labelled`: the samples' labels (class or group ids) say which pairs are positives.
    """
    text_config = model.config.text_config
    micro = torch.tensor(batch.micro, dtype=torch.long)
    ddp = isinstance(towers, nn.parallel.DistributedDataParallel)  # gradients sync on the last micro-batch
    total = 0.0
    for m in range(config.grad_accum):
        rows = (micro == m).nonzero().flatten()
        captions = [batch.captions[i] for i in rows.tolist()]
        if captions:
            images = {name: value[rows] for name, value in batch.inputs.items()}
            ids = fixed_length_ids(processor.tokenizer, captions, text_config)
        else:
            images = empty_inputs(processor.image_processor)
            ids = torch.zeros(0, text_config.max_position_embeddings, dtype=torch.long)
        if labelled:
            labels: torch.Tensor | None = torch.tensor(
                [batch.labels[i] for i in rows.tolist()], dtype=torch.long
            )
        else:
            labels = _token_groups(ids) if config.group_identical_captions else None
        last = m == config.grad_accum - 1
        with towers.no_sync() if ddp and not last else nullcontext():
            with precision.context(dist_.device):
                images = {name: value.to(dist_.device) for name, value in images.items()}
                image, text = towers(ids.to(dist_.device), images)
            loss = siglip_loss(
                image, text, model.logit_scale, model.logit_bias,
                mode="local" if dist_.world == 1 else config.loss, chunk_size=config.loss_chunk_size,
                labels=None if labels is None else labels.to(dist_.device),
            )  # fmt: skip
            (loss / config.grad_accum).backward()
        total += loss.item()
    return total / config.grad_accum


def _token_groups(ids: torch.Tensor) -> torch.Tensor:
    """One label per distinct row of token ids (captions that give the same text embedding), equal on every
    rank without communication: the first 8 bytes of the row's BLAKE2 hash."""
    digests = [hashlib.blake2b(row.numpy().tobytes(), digest_size=8).digest() for row in ids.cpu()]
    return torch.tensor([int.from_bytes(d, "little", signed=True) for d in digests], dtype=torch.long)


def _optimizer_step(
    config: TrainConfig, model: TwoTowerModel, optimizer: torch.optim.Optimizer, scheduler: Any
) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    max_norm = config.grad_clip or float("inf")  # with inf the norm is measured, nothing is clipped
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return grad_norm


def _global_counts(seen: int, failed: int, dist_: _Dist) -> tuple[int, int]:
    if dist_.world == 1:
        return seen, failed
    counts = torch.tensor([seen, failed], dtype=torch.long, device=dist_.device)
    dist.all_reduce(counts)
    return int(counts[0]), int(counts[1])


def _check_failures(config: TrainConfig, state: dict[str, int], per_epoch: int, examples: list[str]) -> None:
    """Stop when more than `max_bad_fraction` of the images tried failed (over at least one epoch's worth)."""
    tried = max(state["seen"] + state["failed"], per_epoch * config.batch_size)
    if state["failed"] > config.max_bad_fraction * tried:
        raise DataError(
            f"images that failed to load: {state['failed']} of {state['seen'] + state['failed']} so far (e.g. "
            f"{examples[:3]}), more than max_bad_fraction={config.max_bad_fraction}"
        )


def _checkpoint(
    config: TrainConfig,
    model: TwoTowerModel,
    processor: Processor,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, int],
    dist_: _Dist,
) -> None:
    """Every rank's random states, written by the main process with the rest of the training state."""
    randoms: list[Any] = [None] * dist_.world
    if dist_.world > 1:
        dist.all_gather_object(randoms, _random_states())
    else:
        randoms = [_random_states()]
    if dist_.main:
        full = {
            **state,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "random": randoms,
            "config": dataclasses.asdict(config),
        }
        _save_checkpoint(config, model, processor, full)
    if dist_.world > 1:
        dist.barrier()


def _evaluate(
    config: TrainConfig, model: TwoTowerModel, processor: Processor, dist_: _Dist
) -> dict[str, float]:
    """Zero-shot top-1 on a folder of class folders, as `siglip eval zeroshot` computes it (main process;
    the others wait)."""
    result: dict[str, float] = {}
    if dist_.main:
        report = evaluate_zeroshot(
            config.eval_data, Embedder(model, processor), config.eval_templates, batch_size=256,
            workers=config.workers, progress=False,
        )  # fmt: skip
        model.train()
        result = {"eval_top1": report.top1}
    if dist_.world > 1:
        dist.barrier()
    return result


def _progress(config: TrainConfig, dist_: _Dist, total: int, start: int) -> Any:
    if not (config.progress and dist_.main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
