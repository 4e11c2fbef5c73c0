"""Helpers shared by the benchmark scripts: test photos, model shapes, alternating timing, machine line."""

from __future__ import annotations

import copy
import os
import platform
import random
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

# The oracles (transformers, open_clip, timm) import beside the test extra's torchvision only with the tests'
# shim: one module, shared (see tests/_torchvision.py).
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))
import _torchvision  # noqa: F401

# `timeout` and `kill` send SIGTERM, whose default ends the process at once: unwind instead, as on Ctrl-C, so
# that a run's temporary folders (a base checkpoint saved per runtime compared, ~800 MB each) are removed.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")

# Released shapes at their full depth (random weights: speed does not depend on the values).
_BASE = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
_SMALL = dict(hidden_size=128, intermediate_size=512, num_attention_heads=2, num_hidden_layers=2)
_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27)
SHAPES: dict[str, dict] = {
    "base16-224": dict(text_config=dict(_BASE), vision_config=dict(_BASE, image_size=224, patch_size=16)),
    "so400m14-384": dict(
        text_config=dict(_SO400M), vision_config=dict(_SO400M, image_size=384, patch_size=14)
    ),
    # not a released shape: two narrow layers, to try a benchmark script quickly before a real run
    "small16-224": dict(text_config=dict(_SMALL), vision_config=dict(_SMALL, image_size=224, patch_size=16)),
}
RELEASED_SHAPES = ("base16-224", "so400m14-384")


def features_tensor(output: object) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features; 4.x and siglip return the tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def make_jpegs(directory: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` distinct 640x480 JPEG photos: random crops (half the area or more) of scikit-image's photos."""
    from skimage import data

    rng = random.Random(seed)
    sources = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]
    paths = []
    for i in range(count):
        photo = sources[i % len(sources)]
        scale = rng.uniform(0.7, 1.0)
        width, height = int(photo.width * scale), int(photo.height * scale)
        left, top = rng.randint(0, photo.width - width), rng.randint(0, photo.height - height)
        crop = photo.crop((left, top, left + width, top + height)).resize(
            (640, 480), Image.Resampling.BICUBIC
        )
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        paths.append(directory / f"photo{i:04d}.jpg")
        crop.save(paths[-1], "JPEG", quality=90)
    return paths


def time_alternately(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each call, the calls taking turns (so drifts in machine speed hit all alike)."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def paired_speedups(
    calls: dict[str, Callable[[], object]], baseline: str, rounds: int
) -> dict[str, list[float]]:
    """Each call's speed against `baseline`'s, one ratio per round, sorted: within a round each call is timed
    back to back with the baseline, the two taking turns at going first. On a host whose speed changes from
    one minute to the next (a shared VM), a ratio of two calls a few milliseconds apart keeps its meaning
    where a ratio of medians taken over minutes does not."""
    ratios: dict[str, list[float]] = {name: [] for name in calls if name != baseline}
    for round_ in range(rounds):
        for name in ratios:
            pair = [baseline, name] if round_ % 2 == 0 else [name, baseline]
            seconds = {}
            for each in pair:
                start = time.perf_counter()
                calls[each]()
                seconds[each] = time.perf_counter() - start
            ratios[name].append(seconds[baseline] / seconds[name])
    return {name: sorted(values) for name, values in ratios.items()}


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 5) -> float:
    """This machine's matrix-product rate in GFLOP/s: the best of square products of `sizes`."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        # F.linear (a @ b.T), as the models call it: for bf16 on CPUs without bf16 units it takes oneDNN's
        # path, ~20x faster than torch.mm's fallback there
        product = {"mm": lambda a=a, b=b: torch.nn.functional.linear(a, b)}
        seconds = min(time_alternately(product, 1, warmup=1)["mm"] for _ in range(repeats))
        best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def cpu_flags() -> list[str]:
    """The CPU's vector and matrix features that decide our speed (AVX2, AVX-512, its BF16 and VNNI, AMX), as
    /proc/cpuinfo names them: what BENCHMARKS.md says a figure was measured on."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    return sorted(set(re.findall(r"\b(avx2|avx512f|avx512_bf16|avx512_vnni|amx\w*)\b", text)))


# CPUs this one can stand in for: torch's kernel libraries held to their instructions (`--emulate-cpu`). The
# same cores, caches and clocks run the kernels such a CPU would run: a figure so measured says what those
# kernels reach here, not what that CPU would.
EMULATED_CPUS = {
    "avx2": dict(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", FBGEMM_ENABLE_INSTRUCTIONS="AVX2",
                 MKL_ENABLE_INSTRUCTIONS="AVX2"),  # Haswell to Comet Lake, Zen 1-3
    "avx512": dict(ONEDNN_MAX_CPU_ISA="AVX512_CORE", FBGEMM_ENABLE_INSTRUCTIONS="AVX512",
                   MKL_ENABLE_INSTRUCTIONS="AVX512"),  # Skylake-SP: AVX-512 without VNNI
    "avx512-vnni": dict(ONEDNN_MAX_CPU_ISA="AVX512_CORE_VNNI", FBGEMM_ENABLE_INSTRUCTIONS="AVX512_E1",
                        MKL_ENABLE_INSTRUCTIONS="AVX512_E1"),  # Cascade Lake, Ice Lake
    "avx512-bf16": dict(ONEDNN_MAX_CPU_ISA="AVX512_CORE_BF16", FBGEMM_ENABLE_INSTRUCTIONS="AVX512_E1",
                        MKL_ENABLE_INSTRUCTIONS="AVX512_E1"),  # Cooper Lake, Zen 4 and 5
}  # fmt: skip


def emulate_cpu(name: str | None) -> None:
    """Start this benchmark again with torch's kernel libraries held to the instructions of `EMULATED_CPUS[name]`
    (they read the variables once, at their first call), unless they already are or `name` is None."""
    if name is None:
        return
    wanted = EMULATED_CPUS[name]
    if any(os.environ.get(variable) != value for variable, value in wanted.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})


def machine_line() -> str:
    """The CPU, the units its kernels may use (`siglip`'s probe: ISA caps in the environment hide units), the
    caps set, the load and the versions."""
    import transformers

    from siglip.tools.embeddings.precision import cpu_units, isa_caps

    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    names = [line for line in text.splitlines() if line.startswith("model name")]
    cpu = names[0].split(":", 1)[1].strip() if names else platform.processor() or platform.machine()
    # the family and model tell apart CPUs of one name and the same flags (an EPYC's Zen 4 and Zen 5: 25, 26)
    family = re.search(r"^cpu family\s*:\s*(\d+)\s*\nmodel\s*:\s*(\d+)", text, re.M) if names else None
    cpu += f" (family {family[1]}, model {family[2]})" if family else ""
    usable = cpu_units()
    units = "AMX" if usable.amx else "yes" if usable.bf16 else "no"
    caps = isa_caps()
    held = f", held to {' '.join(caps)}" if caps else ""
    return (
        f"{cpu}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}{held}, bf16 units: "
        f"{units}, VNNI: {'yes' if usable.vnni else 'no'}; load "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )


def train_tokenizer(directory: Path, extra: list[str] | tuple[str, ...] = ()) -> Path:
    """A 4,000-piece SentencePiece model trained on CPython's documentation (`pydoc_data`) and `extra`."""
    import io
    from pydoc_data.topics import topics

    import sentencepiece as spm

    lines = [line for text in topics.values() for line in text.splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines + list(extra)), model_writer=model, vocab_size=4000, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )  # fmt: skip
    path = directory / "spiece.model"
    path.write_bytes(model.getvalue())
    return path


def random_checkpoint(
    shape: str, directory: Path, vocabulary: list[str] | tuple[str, ...] = ()
) -> torch.nn.Module:
    """Save a random-weight transformers SiglipModel of `shape` (seed 0) into `directory` with processor
    files (a tokenizer trained by `train_tokenizer`, with `vocabulary`), and return it: the reference."""
    import tempfile

    import transformers

    import siglip

    torch.manual_seed(0)
    model = transformers.SiglipModel(transformers.SiglipConfig(**copy.deepcopy(SHAPES[shape]))).eval()
    model.save_pretrained(directory)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = siglip.SiglipTokenizer(train_tokenizer(Path(tmp), vocabulary))
        siglip.SiglipProcessor(siglip.SiglipImageProcessor(), tokenizer).save_pretrained(directory)
    return model
