"""`siglip train`: learning, multi-process equivalence, kill-and-resume, data errors, transformers interop."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from _material import assert_freed_memory_kept
from _reference import quiet_transformers
from siglip import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer
from siglip.core import heap
from siglip.tools.cli import main
from siglip.tools.embeddings.embedder import Embedder
from siglip.tools.evaluation import evaluate_zeroshot
from siglip.tools.training import DataError, TrainConfig, latest_checkpoint, train, trainer
from siglip.tools.training.data import ClassFolderDataset
from siglip.tools.training.trainer import _param_groups, _schedule

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
TINY = dict(
    text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     vocab_size=1000, max_position_embeddings=12),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       image_size=16, patch_size=4),
)  # fmt: skip


@pytest.fixture(scope="module")
def start(tmp_path_factory, spiece_model) -> Path:
    """A from-scratch starting point: config.json plus tokenizer and image-processor files."""
    directory = tmp_path_factory.mktemp("start")
    SiglipConfig(**TINY).save_pretrained(directory)
    processor = SiglipProcessor(
        SiglipImageProcessor(size={"height": 16, "width": 16}),
        SiglipTokenizer(spiece_model, model_max_length=12, model_input_names=["input_ids"]),
    )
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """Class folders of noisy colour patches: 4 classes x 24 images."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir()
        for i in range(24):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _config(start: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        data=str(data), output_dir=str(out), config=str(start), processor=str(start),
        templates=["a photo of {}", "the colour {}"], batch_size=16, steps=12, lr=3e-3, warmup_steps=2,
        workers=0, progress=False, log_every=1, save_every=0, seed=1,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_training_lowers_the_loss_and_learns_the_classes(start, colours, tmp_path):
    final = train(_config(start, colours, tmp_path, steps=30, eval_data=str(colours), eval_every=30,
                          eval_templates=["a photo of {}"]))  # fmt: skip
    records = _metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 31))
    first, last = np.mean([r["loss"] for r in records[:5]]), np.mean([r["loss"] for r in records[-5:]])
    assert last < 0.7 * first, (first, last)
    assert records[-1]["eval_top1"] >= 0.9  # 4 colours, zero-shot from the class names
    assert {"lr", "logit_scale", "logit_bias", "samples_per_s", "grad_norm"} <= set(records[-1])
    model = SiglipModel.from_pretrained(final)  # the final model is a complete checkpoint directory
    assert SiglipProcessor.from_pretrained(final).tokenizer.model_max_length == 12
    assert model.config.text_config.vocab_size == 1000


def test_class_labels_raise_the_true_class_probability(start, colours, tmp_path):
    # Without labels each image meets the other captions of its colour as negatives, which holds every
    # probability low; with class labels they are positives and the true class's probability rises.
    reports = {}
    for labelled in (True, False):
        final = train(_config(start, colours, tmp_path / str(labelled), steps=30, class_labels=labelled))
        embedder = Embedder.from_pretrained(final, device="cpu", precision="fp32")
        reports[labelled] = evaluate_zeroshot(colours, embedder, ["a photo of {}"], workers=0, progress=False)
    assert reports[True].top1 >= 0.9
    with_labels, without = (reports[k].median_true_class_probability for k in (True, False))
    assert with_labels > 0.5 > without and with_labels > 2 * without, (with_labels, without)


@pytest.mark.parametrize(
    ("data", "options", "expected"),
    [
        ("folders", {}, "colour"),  # class ids by default
        ("folders", dict(class_labels=False), None),
        ("pairs", {}, None),
        ("pairs", dict(group_column="colour"), "colour"),
        ("pairs", dict(group_identical_captions=True), "caption"),
    ],
)
def test_labels_reach_the_loss(start, colours, tmp_path, monkeypatch, data, options, expected):
    """What `siglip_loss` is given per micro-batch: no labels, or labels equal exactly where `expected` is."""
    calls = []

    def recording_loss(*args, labels=None, **kwargs):
        calls.append(labels)
        return siglip_loss(*args, labels=labels, **kwargs)

    siglip_loss = trainer.siglip_loss
    monkeypatch.setattr(trainer, "siglip_loss", recording_loss)
    rows = [{**r, "colour": Path(r["image"]).parent.name} for r in _colour_rows(colours)]
    for r in rows[::2]:  # two captions per colour: equal captions are a finer grouping than colours
        r["caption"] = "a patch of " + r["colour"]
    source = colours if data == "folders" else _pairs(tmp_path, colours, rows)
    out = tmp_path / "run"
    train(_config(start, source, out, steps=2, batch_size=48, grad_accum=2, lr=1e-6, workers=0, **options))
    assert len(calls) == 4  # 2 steps x 2 micro-batches
    if expected is None:
        assert calls == [None] * 4
        return
    # Which rows each micro-batch held, in the order the loader gives them (the same seeded order).
    layout = trainer.BatchLayout(48, 2, seed=1)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(layout.epoch_seed(0))).tolist()
    key_of = (
        ClassFolderDataset(colours, None, ["{}"]).labels if data == "folders" else [r[expected] for r in rows]
    )
    for m, labels in enumerate(calls):
        truth = [key_of[i] for i in order[m * 24 : (m + 1) * 24]]
        same_truth = torch.tensor([[a == b for b in truth] for a in truth])
        assert labels.dtype == torch.long and torch.equal(labels[:, None] == labels[None, :], same_truth)


def test_lock_image_keeps_the_image_tower(start, colours, tmp_path):
    initial_dir = tmp_path / "initial"
    torch.manual_seed(0)
    SiglipModel(SiglipConfig(**TINY)).save_pretrained(initial_dir)
    final = train(_config(start, colours, tmp_path / "run", config=None, model=str(initial_dir), lock_image=True,
                          steps=4))  # fmt: skip
    before, after = _weights(initial_dir), _weights(final)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision_model."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("text_model."))


def test_class_folders_skip_hidden_entries(colours, tmp_path, start):
    import shutil

    shutil.copytree(colours, tmp_path / "data")
    (tmp_path / "data" / ".ipynb_checkpoints").mkdir()
    shutil.copy(next(colours.rglob("*.png")), tmp_path / "data" / ".ipynb_checkpoints" / "x.png")
    shutil.copy(next(colours.rglob("*.png")), tmp_path / "data" / "red" / "._0.png")
    dataset = ClassFolderDataset(tmp_path / "data", SiglipImageProcessor(), ["{}"])
    assert dataset.classes == sorted(COLOURS) and len(dataset) == 96


def test_weight_decay_groups_and_schedule():
    model = SiglipModel(SiglipConfig(**TINY))
    decay, no_decay = _param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} >= {"logit_scale", "logit_bias", "text_model.head.bias"}
    assert all("layer_norm" not in names[id(p)] and "bias" not in names[id(p)] for p in decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    factor = _schedule(warmup=4, total=14)
    assert [round(factor(s), 6) for s in (0, 3, 4, 9, 14)] == [0.25, 1.0, 1.0, 0.5, 0.0]


def _run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kwargs)


def _cli_args(start: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(data), "--output-dir", str(out), "--config", str(start), "--processor", str(start),
        "--templates", "a photo of {}", "the colour {}", "--batch-size", "16", "--lr", "3e-3",
        "--warmup-steps", "2", "--workers", "0", "--no-progress", "--log-every", "1", "--seed", "1", *extra,
    ]  # fmt: skip


def _without_key_biases(run: Path) -> dict[str, torch.Tensor]:
    """Final weights minus the attention key biases.

    Softmax ignores a bias added to every key: its true gradient is 0 and autograd returns rounding noise,
    which Adam scales up to full-size steps, so those entries differ between any two summation orders.
    """
    weights = _weights(run / "model")
    for key in list(weights):
        if key.endswith("k_proj.bias"):
            del weights[key]
        elif key.endswith("in_proj_bias"):  # the pooling head's [q; k; v] biases
            q, _, v = weights[key].chunk(3)
            weights[key] = torch.cat([q, v])
    return weights


def test_two_processes_match_one_with_the_same_global_batch(start, colours, tmp_path):
    # With 16 micro-batches of one pair, one of the two ranks holds nothing in each: it still takes part.
    for accum in ("1", "16"):
        common = ["--steps", "6", "--save-every", "0", "--grad-accum", accum]
        one = _run_cli(
            [sys.executable, "-m", "siglip", "train", *_cli_args(start, colours, tmp_path / accum, *common)]
        )
        assert one.returncode == 0, one.stderr
    # Each loss once (ring with 16 micro-batches, its hardest case); test_loss_distributed.py compares the two
    # losses with each other without the CLI.
    for loss, accum in (("all_gather", "1"), ("ring", "16")):
        out = tmp_path / f"two-{loss}-{accum}"
        common = ["--steps", "6", "--save-every", "0", "--grad-accum", accum, "--loss", loss]
        two = _run_cli([
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "siglip", "train", *_cli_args(start, colours, out, *common),
        ])  # fmt: skip
        assert two.returncode == 0, two.stderr
        reference, result = _without_key_biases(tmp_path / accum), _without_key_biases(out)
        for key, value in reference.items():
            torch.testing.assert_close(result[key], value, rtol=1e-4, atol=1e-5, msg=f"{loss}/{accum}: {key}")
        losses_one = [r["loss"] for r in _metrics(tmp_path / accum)]
        losses_two = [r["loss"] for r in _metrics(out)]
        np.testing.assert_allclose(losses_two, losses_one, rtol=1e-4)


_GROUP_FREED = """
import gc
import os
import sys
import weakref
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from siglip.tools.training import trainer

groups = []
init = dist.init_process_group


def recording(*args, **kwargs):
    init(*args, **kwargs)
    groups.append(weakref.ref(dist.group.WORLD))


dist.init_process_group = recording
with trainer._distributed():
    model = DistributedDataParallel(torch.nn.Linear(2, 2))  # what a training run wraps its towers in
    del model
gc.collect()
Path(sys.argv[1], os.environ["RANK"]).write_text("freed" if groups[0]() is None else "alive")
"""


def test_the_process_group_is_freed_when_the_run_ends(tmp_path):
    """The group a two-process run joins is freed by `destroy_process_group`, while the interpreter still
    runs. (DistributedDataParallel imports `torch.distributed.nn`, whose functions took the group as a
    default argument when it was imported after the group existed; the group then lived until the
    interpreter's exit, where tearing gloo down now and then aborted a finished run.)"""
    script = tmp_path / "group.py"
    script.write_text(_GROUP_FREED)
    two = _run_cli([
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
        str(tmp_path),
    ])  # fmt: skip
    assert two.returncode == 0, two.stderr
    assert [(tmp_path / rank).read_text() for rank in ("0", "1")] == ["freed", "freed"]


@pytest.mark.skipif(
    not heap._is_glibc() or torch.cuda.is_available(), reason="glibc's malloc, training on the CPU"
)
def test_a_training_run_on_the_cpu_keeps_freed_memory_for_the_next_step(start, colours, tmp_path):
    """As inference modes do (test_inference.py): each step's activations reuse the last step's memory
    (3-5% of a base-size step on 2 cores), where glibc unmapped and faulted them in again."""
    setup = (
        "import sys\nfrom siglip.tools.training import TrainConfig, train\n"
        "train(TrainConfig(data=sys.argv[2], output_dir=sys.argv[3], config=sys.argv[1], processor=sys.argv[1], "
        "templates=['a photo of {}'], batch_size=8, steps=1, workers=0, progress=False, save_every=0))"
    )
    assert_freed_memory_kept(setup, str(start), str(colours), str(tmp_path / "out"), kept=True)


def test_kill_and_resume_ends_with_the_same_weights(start, colours, tmp_path):
    extra = ["--steps", "40", "--save-every", "5", "--keep-checkpoints", "3"]
    straight = _run_cli(
        [sys.executable, "-m", "siglip", "train", *_cli_args(start, colours, tmp_path / "a", *extra)]
    )
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "b"
    args = [sys.executable, "-m", "siglip", "train", *_cli_args(start, colours, out, *extra)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    deadline = time.monotonic() + 120
    while latest_checkpoint(out) is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = latest_checkpoint(out)
    assert killed_at is not None and killed_at.name.startswith("step-")

    resumed = _run_cli(
        [sys.executable, "-m", "siglip", "train", *_cli_args(start, colours, out, *extra, "--resume")]
    )
    assert resumed.returncode == 0, resumed.stderr
    reference, result = _weights(tmp_path / "a" / "model"), _weights(out / "model")
    assert all(torch.equal(result[k], reference[k]) for k in reference), "resumed run diverged"
    steps = [r["step"] for r in _metrics(out)]
    assert steps == list(range(1, 41))  # every step logged once, none lost, none twice
    assert [r["loss"] for r in _metrics(out)] == [r["loss"] for r in _metrics(tmp_path / "a")]


def test_a_fresh_run_does_not_mix_into_an_old_one(start, colours, tmp_path):
    train(_config(start, colours, tmp_path, steps=4, save_every=2))
    with pytest.raises(DataError, match="already holds checkpoints of a run: pass --resume"):
        train(_config(start, colours, tmp_path, steps=2, save_every=2))
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000004"


def test_evaluation_and_logging_intervals_are_independent(start, colours, tmp_path):
    train(_config(start, colours, tmp_path, steps=4, log_every=3, eval_every=2, eval_data=str(colours)))
    records = {r["step"]: r for r in _metrics(tmp_path)}
    assert sorted(records) == [2, 3, 4]
    assert "eval_top1" in records[2] and "loss" not in records[2]
    assert "eval_top1" not in records[3] and "loss" in records[3]
    assert {"eval_top1", "loss"} <= set(records[4])


def test_grad_clip_zero_turns_clipping_off(start, colours, tmp_path):
    train(_config(start, colours, tmp_path, steps=3, grad_clip=0.0, lr=1e-2))
    records = _metrics(tmp_path)
    assert records[0]["grad_norm"] > 1.0  # measured, and larger than the default clip would leave it
    assert records[-1]["loss"] < records[0]["loss"]  # and the run learns (clip 0 must not zero the gradients)


def test_partial_checkpoints_and_metrics_lines_are_ignored(start, colours, tmp_path):
    train(_config(start, colours, tmp_path, steps=4, save_every=2))
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) == root / "step-00000004"
    # A crash while writing step 6 leaves a partial folder and no pointer update: resumption ignores it.
    (root / ".step-00000006.partial").mkdir()
    (root / ".latest.partial").write_text("step-00000006\n")
    with open(tmp_path / "metrics.jsonl", "a") as f:  # and a line cut short by a full disk: dropped on resume
        f.write('{"step": 5, "lo')
    assert latest_checkpoint(tmp_path) == root / "step-00000004"
    train(_config(start, colours, tmp_path, steps=6, save_every=2, resume=True))
    assert [r["step"] for r in _metrics(tmp_path)] == list(range(1, 7))


def _pairs(tmp_path: Path, colours: Path, rows: list[dict], suffix: str = ".csv") -> Path:
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        keys = list(rows[0])
        path.write_text(
            ",".join(keys) + "\n" + "".join(",".join(str(r[k]) for k in keys) + "\n" for r in rows)
        )
    return path


def _colour_rows(colours: Path) -> list[dict]:
    return [{"image": str(p), "caption": f"a {p.parent.name} patch"} for p in sorted(colours.rglob("*.png"))]


def test_pairs_file_with_bad_rows(start, colours, tmp_path):
    rows = _colour_rows(colours)
    with pytest.raises(DataError, match=r"has no column 'caption' \(columns: \['image', 'text'\]\)"):
        train(_config(start, _pairs(tmp_path, colours, [{"image": r["image"], "text": r["caption"]} for r in rows]),
                      tmp_path / "o"))  # fmt: skip
    with pytest.raises(DataError, match="line 3: empty or missing caption"):
        bad = [dict(r) for r in rows]
        bad[2]["caption"] = ""
        train(_config(start, _pairs(tmp_path, colours, bad, ".jsonl"), tmp_path / "o"))
    missing = [dict(r) for r in rows]
    for r in missing[:5]:
        r["image"] = r["image"] + ".gone"
    with pytest.raises(DataError, match=r"5 of 96 image files are missing.*max_bad_fraction=0.01"):
        train(_config(start, _pairs(tmp_path, colours, missing), tmp_path / "o"))
    out = tmp_path / "tolerant"
    train(_config(start, _pairs(tmp_path, colours, missing), out, max_bad_fraction=0.1, steps=2))
    assert (out / "model" / "model.safetensors").is_file()
    assert not (tmp_path / "o" / "checkpoints").exists(), "nothing is written when the data is refused"


def test_corrupt_images_are_skipped_and_counted(start, colours, tmp_path):
    rows = _colour_rows(colours)
    for i in range(3):
        broken = tmp_path / f"broken{i}.png"
        broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
        rows[i * 30]["image"] = str(broken)
    out = tmp_path / "run"
    # 3 of 96 images (3.1%) fail in each of 3 epochs: within a 5% budget however long the run.
    train(_config(start, _pairs(tmp_path, colours, rows), out, steps=18, max_bad_fraction=0.05))
    assert _metrics(out)[-1]["failed_images"] == 9  # every sample is seen once per 6 steps of 16
    with pytest.raises(
        DataError, match=r"failed to load: 1 of 48 so far .*broken\d.png.*max_bad_fraction=0.01"
    ):
        train(_config(start, _pairs(tmp_path, colours, rows), tmp_path / "strict", steps=6))


def test_webdataset_shards(start, colours, tmp_path):
    import webdataset as wds

    files = sorted(colours.rglob("*.png"))
    for shard in range(3):
        with wds.TarWriter(str(tmp_path / f"shard-{shard:04d}.tar")) as sink:
            for i, path in enumerate(files[shard::3]):
                sink.write(
                    {
                        "__key__": f"{shard}-{i}",
                        "png": path.read_bytes(),
                        "txt": f"a {path.parent.name} patch",
                    }
                )
            if shard == 1:  # captions that cannot be read: counted as failed samples, not a crash
                sink.write({"__key__": "bad-json", "png": files[0].read_bytes(), "json": b'["a", "list"]'})
                sink.write({"__key__": "bad-text", "png": files[0].read_bytes(), "txt": b"\xff\xfe bad"})
    out = tmp_path / "run"
    train(_config(start, str(tmp_path / "shard-{0000..0002}.tar"), out, steps=12, save_every=4,
                  max_bad_fraction=0.05))  # fmt: skip
    assert [r["step"] for r in _metrics(out)] == list(range(1, 13))
    assert _metrics(out)[0]["epoch"] == pytest.approx(1 / 6)  # 98 samples: 6 full batches of 16 per epoch
    assert _metrics(out)[-1]["failed_images"] in (2, 4)  # the bad pair, once or twice in two epochs
    with pytest.raises(DataError, match="WebDataset shards not found"):
        train(_config(start, str(tmp_path / "nothing-{0000..0001}.tar"), tmp_path / "x"))
    for shard in range(3):  # gzipped shards (webdataset reads them): counted as the plain ones are
        plain = tmp_path / f"shard-{shard:04d}.tar"
        (tmp_path / f"zipped-{shard:04d}.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    train(_config(start, str(tmp_path / "zipped-{0000..0002}.tar.gz"), tmp_path / "gz", steps=2,
                  max_bad_fraction=0.05))  # fmt: skip
    assert _metrics(tmp_path / "gz")[0]["epoch"] == pytest.approx(1 / 6)


def test_fine_tuned_transformers_checkpoint_loads_in_transformers(start, colours, tmp_path):
    import transformers

    quiet_transformers()
    torch.manual_seed(0)
    config = transformers.SiglipConfig(**TINY)
    transformers.SiglipModel(config).save_pretrained(tmp_path / "hf")
    final = train(_config(start, colours, tmp_path / "ft", config=None, model=str(tmp_path / "hf"), steps=3))
    theirs = transformers.SiglipModel.from_pretrained(final)
    ours = SiglipModel.from_pretrained(final)
    for name, value in ours.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[name]), name
    assert not torch.equal(
        ours.logit_bias, transformers.SiglipModel.from_pretrained(tmp_path / "hf").logit_bias
    )


def test_config_errors(start, tmp_path, capsys):
    with pytest.raises(ValueError, match="exactly one of model"):
        TrainConfig(data="x", output_dir="y")
    with pytest.raises(ValueError, match="multiple of grad_accum"):
        TrainConfig(data="x", output_dir="y", model="m", batch_size=10, grad_accum=3)
    with pytest.raises(DataError, match="cannot tell what 'nowhere' is"):
        train(_config(start, Path("nowhere"), tmp_path))
    with pytest.raises(ValueError, match="loss_chunk_size bounds memory with the ring loss"):
        TrainConfig(data="x", output_dir="y", model="m", loss_chunk_size=64)
    with pytest.raises(ValueError, match="grad_clip must be at least 0"):
        TrainConfig(data="x", output_dir="y", model="m", grad_clip=-1)
    with pytest.raises(ValueError, match="eval_every needs eval_data"):
        TrainConfig(data="x", output_dir="y", model="m", eval_every=5)
    with pytest.raises(ValueError, match="one of group_column or group_identical_captions"):
        TrainConfig(data="x", output_dir="y", model="m", group_column="g", group_identical_captions=True)
    argv = ["train", "--data", "x", "--output-dir", tmp_path / "out", "--config", start, "--processor", start]
    assert main([str(a) for a in [*argv, "--ignore-mismatched-sizes"]]) == 2  # not silently ignored
    message = "ignore_mismatched_sizes applies to the weights of model; config trains from scratch"
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="a group column labels the rows of a pairs file"):
        train(_config(start, tmp_path, tmp_path / "out", group_column="g"))


# --- SigLIP 2 -----------------------------------------------------------------------------------------------
ASPECTS = [(8, 40), (40, 8), (24, 24), (17, 61), (64, 16), (1, 1)]  # (height, width): mixed in every batch


@pytest.fixture(scope="module")
def siglip2_starts(tmp_path_factory) -> dict[str, Path]:
    """Tiny SigLIP 2 checkpoints to fine-tune: fixed-resolution (model_type siglip) and NaFlex."""
    from _material import save_tiny_fixres_siglip2, save_tiny_naflex

    root = tmp_path_factory.mktemp("siglip2")
    return {"fixres": save_tiny_fixres_siglip2(root / "fixres"), "naflex": save_tiny_naflex(root / "naflex")}


@pytest.fixture(scope="module")
def aspect_colours(tmp_path_factory) -> Path:
    """Class folders of noisy colour patches of mixed aspect ratios: 4 classes x 6 images."""
    root = tmp_path_factory.mktemp("aspect-colours")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir()
        for i, size in enumerate(ASPECTS):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _siglip2_args(start: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(data), "--output-dir", str(out), "--model", str(start), "--templates", "a photo of {}",
        "--batch-size", "8", "--steps", "4", "--lr", "3e-3", "--warmup-steps", "1", "--workers", "0",
        "--no-progress", "--log-every", "1", "--seed", "1", *extra,
    ]  # fmt: skip


def _siglip2_config(start: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        data=str(data), output_dir=str(out), model=str(start), templates=["a photo of {}"], batch_size=8,
        steps=4, lr=3e-3, warmup_steps=1, workers=0, progress=False, log_every=1, save_every=0, seed=1,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def _assert_same_training(reference: Path, result: Path) -> None:
    """Two runs that sum the loss in other orders (chunks, ranks) end with the same weights and losses.

    Adam turns the rounding noise of entries whose gradient is ~0 into steps of up to lr: a handful of the
    300k entries then differ by ~1e-4 (measured: at most 6.4e-5, chunks or two ranks), while a chunk or a rank lost or
    counted twice would move most of them by ~lr = 3e-3 at every step.
    """
    expected, got = _without_key_biases(reference), _without_key_biases(result)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=3e-4, msg=key)
    losses = [r["loss"] for r in _metrics(reference)]
    np.testing.assert_allclose([r["loss"] for r in _metrics(result)], losses, rtol=1e-5)


class _Interrupted(Exception):
    """What the tests raise to stop a run right after a checkpoint, as a crash would."""


@pytest.mark.parametrize("family", ["fixres", "naflex"])
def test_siglip2_resumes_exactly_and_chunks_its_loss(
    siglip2_starts, aspect_colours, tmp_path, monkeypatch, family
):
    """An interrupted run resumed from its step-2 checkpoint ends with the weights of an uninterrupted one,
    bit for bit; the chunked loss (ring mode on one process) gives the unchunked run's weights."""
    start = siglip2_starts[family]
    straight = train(_siglip2_config(start, aspect_colours, tmp_path / "a", save_every=2))

    real_checkpoint, saved = trainer._checkpoint, []

    def crash_after_the_first(*args, **kwargs):
        real_checkpoint(*args, **kwargs)
        saved.append(args[-2]["step"])  # the `state` argument
        raise _Interrupted

    monkeypatch.setattr(trainer, "_checkpoint", crash_after_the_first)
    with pytest.raises(_Interrupted):
        train(_siglip2_config(start, aspect_colours, tmp_path / "b", save_every=2))
    monkeypatch.undo()
    assert saved == [2]
    resumed = train(_siglip2_config(start, aspect_colours, tmp_path / "b", save_every=2, resume=True))
    reference, result = _weights(straight), _weights(resumed)
    assert reference.keys() == result.keys()
    assert all(torch.equal(result[k], reference[k]) for k in reference), "resumed run diverged"
    assert [r["loss"] for r in _metrics(tmp_path / "b")] == [r["loss"] for r in _metrics(tmp_path / "a")]

    chunked = train(_siglip2_config(start, aspect_colours, tmp_path / "c", loss="ring", loss_chunk_size=3))
    _assert_same_training(tmp_path / "a", tmp_path / "c")
    assert not torch.equal(
        _weights(chunked)["logit_bias"], load_file(start / "model.safetensors")["logit_bias"]
    )


@pytest.mark.parametrize(("family", "loss"), [("fixres", ["--loss", "all_gather"]),
                                              ("naflex", ["--loss", "ring", "--loss-chunk-size", "3"])])  # fmt: skip
def test_siglip2_two_processes_match_one(siglip2_starts, aspect_colours, tmp_path, family, loss):
    """torchrun with two processes (all_gather for FixRes; the chunked ring for NaFlex, whose mixed-aspect
    batches are split between the ranks) ends where one process does with the same global batch."""
    start = siglip2_starts[family]
    train(_siglip2_config(start, aspect_colours, tmp_path / "one"))
    two = _run_cli([
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "siglip", "train", *_siglip2_args(start, aspect_colours, tmp_path / "two", *loss),
    ])  # fmt: skip
    assert two.returncode == 0, two.stderr
    _assert_same_training(tmp_path / "one", tmp_path / "two")
