"""How near the hardware's limit siglip's CPU modes run: this machine's instruction peak per precision, the
rate of oneDNN's products at the base towers' layer shapes, and the whole eager towers' rate.

    python benchmarks/bench_peak.py [--threads N] [--rows 64 196 1024] [--batch 8] [--repeats 15]
                                    [--emulate-cpu avx2|avx512|avx512-vnni|avx512-bf16]

- Instruction peak: `peak_loop.cpp`, built here with the machine's C++ compiler (`$CXX`, else g++), runs
  independent chains of the multiply-add instruction of each precision (FMA, AVX-512 BF16's dot product,
  VNNI's u8 x s8 dot product; AVX2's three-instruction int8 step without VNNI) on every thread, with no
  memory traffic: no matrix product can run faster on these units. AMX's tiles are not measured.
- Products: each layer shape of a base tower (queries, keys and values in one product: 768 -> 2304; the
  attention's output 768 -> 768; the MLP 768 -> 3072 -> 768) at a text (64 rows), an image (196) and
  1,024 rows, as the modes call them: fp32 `F.linear` (aten), bf16 `FusedLinear` (oneDNN, its
  packed weight), int8 oneDNN's u8 x s8 product on an input `int8.quantized` made (`Int8Linear`'s product,
  without the quantisation; where eager int8 takes torch's dynamically quantised linears instead,
  `int8_linears_why_not`, their call, its input's quantisation included); each as operations a second and as
  a share of the instruction peak.
- Towers: the base image and text towers (random weights) in eager fp32, bf16 and int8 at `--batch` items:
  the encoder layers' products and attention, in operations a second over the whole call (everything else,
  from the patch embedding and the heads, about 2% of the operations, to layer norms and Python, counts as
  time), and that as a share of the mode's peak (int8's attention computes in bf16 or float32: its share is
  of the int8 peak all the same).

The peak is of the instructions the compiler's `-march=native` picks. `--emulate-cpu NAME` stands this CPU in
for an older one (`_common.EMULATED_CPUS`): the loop is built without the instructions that CPU lacks and
torch's kernel libraries are held to its instructions, so every figure, the peak included, is what those
instructions reach on these cores (with `avx2`: FMA on 256 bits, the three-instruction int8 step, no bf16
units). AMX's tiles, which oneDNN uses for bf16 and int8 where a CPU has them, are not in the peak (shares
there can pass 100%). Without a compiler the shares are left out.

Medians of `--repeats` calls after a warm-up. The figures are this machine's: its flags are printed.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from _common import EMULATED_CPUS, SHAPES, cpu_flags, emulate_cpu, machine_line, time_alternately
from siglip import SiglipConfig, SiglipModel
from siglip.tools.embeddings.inference import InferenceMode
from siglip.tools.embeddings.int8 import Int8Linear, int8_linears_why_not, quantize_linear_layers, quantized
from siglip.tools.embeddings.native import compiler_command
from siglip.tools.embeddings.onednn import FusedLinear, fused_linears_available

LOOP = Path(__file__).with_name("peak_loop.cpp")
# the base towers' layer shapes, (input width, output width): q/k/v in one product, out_proj, fc1, fc2
LAYERS = {"qkv": (768, 2304), "out": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768)}
TOKENS = {"image": 196, "text": 64}  # a base/16-224 image's patches (no class token), a text's positions
# The compiler flags that take from `-march=native` what each of `EMULATED_CPUS` lacks (GCC's and clang's
# `-mno-avx512f` also removes every AVX-512 extension)
WITHOUT = {
    "avx2": ["-mno-avx512f", "-mno-avxvnni"],
    "avx512": ["-mno-avx512vnni", "-mno-avx512bf16", "-mno-avxvnni"],
    "avx512-vnni": ["-mno-avx512bf16"],
    "avx512-bf16": [],
}


def instruction_peaks(threads: int, emulated: str | None = None) -> dict[str, float | None]:
    """Operations a second each precision's multiply-add instruction reaches on `threads` threads (None: the
    CPU, or the `EMULATED_CPUS` one it stands in for, has no such instruction), the best of three runs; {}
    where the loop cannot be built."""
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "peak_loop"
        flags = ["-O3", "-march=native", *(WITHOUT[emulated] if emulated else []), "-fopenmp", "-std=c++17"]
        try:  # the compiler siglip builds its kernels with ($CXX, else g++)
            command = [*compiler_command(), *flags, str(LOOP), "-o", str(binary)]
            subprocess.run(command, check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as error:
            # the compiler's last words, where it had any (an older one refuses `WITHOUT`'s newer flags)
            said = getattr(error, "stderr", b"").decode(errors="replace").strip().splitlines()[-1:]
            print(f"the peak loop could not be built ({error}{': ' + said[0] if said else ''}): no shares")
            return {}
        peaks: dict[str, float | None] = {}
        for kind in ("fp32", "bf16", "int8"):
            runs = [
                subprocess.run(
                    [str(binary), kind, str(threads), "40000000"], check=True, capture_output=True, text=True
                ).stdout.strip()
                for _ in range(3)
            ]
            peaks[kind] = None if runs[0] == "none" else max(float(run) for run in runs)
    return peaks


def product_calls(rows: int, width: int, out: int) -> dict[str, Callable[[], object]]:
    """One product of `rows` x `width` by `width` x `out` per precision, as siglip's modes call it."""
    linear = nn.Linear(width, out)
    x = torch.randn(rows, width)
    calls: dict[str, Callable[[], object]] = {"fp32": lambda: F.linear(x, linear.weight, linear.bias)}
    if fused_linears_available("cpu"):
        bf16, x16 = FusedLinear(nn.Linear(width, out).bfloat16()), x.bfloat16()
        calls["bf16"] = lambda: bf16(x16)
    if int8_linears_why_not() is None:
        layer = Int8Linear(linear)
        q, scale, zero_point = quantized(x, layer.qmax)
        weights = layer._weights()
        calls["int8"] = lambda: torch.ops.onednn.qlinear_pointwise(
            q, scale, zero_point, *weights, layer.bias, 1.0, 0, torch.float32, "none", [], ""
        )
    else:  # where eager int8 takes torch's dynamically quantised linears (no kernel, not x86, ...)
        dynamic = quantize_linear_layers(nn.Sequential(linear))
        calls["int8"] = lambda: dynamic(x)
    return calls


def tower_operations(config: SiglipConfig, part: str, batch: int) -> float:
    """The operations of the encoder layers' products and attention in a tower's call on `batch` items."""
    tower = config.vision_config if part == "image" else config.text_config
    dim, hidden, layers = tower.hidden_size, tower.intermediate_size, tower.num_hidden_layers
    tokens = (tower.image_size // tower.patch_size) ** 2 if part == "image" else TOKENS["text"]
    per_token = 2 * (4 * dim * dim + 2 * dim * hidden)
    attention = 4 * tokens * tokens * dim
    return batch * layers * (tokens * per_token + attention)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rows", nargs="+", type=int, default=[TOKENS["text"], TOKENS["image"], 1024])
    parser.add_argument("--batch", type=int, default=8, help="items per tower call")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--emulate-cpu", choices=EMULATED_CPUS, help="stand in for this older CPU (module doc)"
    )
    args = parser.parse_args()
    emulate_cpu(args.emulate_cpu)
    torch.set_num_threads(args.threads)
    print(machine_line(), "; flags:", " ".join(cpu_flags()))
    peaks = instruction_peaks(args.threads, args.emulate_cpu)
    print("\n| precision | instruction peak, G operations/s |\n|---|---:|")
    for kind, rate in peaks.items():
        print(f"| {kind} | {'none' if rate is None else f'{rate / 1e9:.0f}'} |")

    def share(rate: float, kind: str) -> str:
        peak = peaks.get(kind)
        return f"{rate / 1e9:.0f} ({100 * rate / peak:.0f}%)" if peak else f"{rate / 1e9:.0f}"

    kinds = list(product_calls(1, 8, 8))
    print(f"\n| product | rows | {' | '.join(kinds)} |\n|---|---:|" + "---:|" * len(kinds))
    with torch.inference_mode():
        for rows in args.rows:
            for name, (width, out) in LAYERS.items():
                calls = product_calls(rows, width, out)
                rates = [
                    2 * rows * width * out / time_alternately({k: calls[k]}, args.repeats)[k] for k in kinds
                ]
                print(f"| {name} {width} -> {out} | {rows} | " + " | ".join(map(share, rates, kinds)) + " |")

    config = SiglipConfig(**SHAPES["base16-224"])
    pixels = torch.randn(args.batch, 3, config.vision_config.image_size, config.vision_config.image_size)
    ids = torch.randint(0, config.text_config.vocab_size, (args.batch, TOKENS["text"]))
    cells: dict[str, list[str]] = {"image": [], "text": []}
    for mode in kinds:
        model = InferenceMode(mode).apply(SiglipModel(config).eval())
        with torch.inference_mode():
            for part, call in (
                ("image", lambda m=model: m.get_image_features(pixel_values=pixels)),
                ("text", lambda m=model: m.get_text_features(input_ids=ids)),
            ):
                seconds = time_alternately({part: call}, max(3, args.repeats // 3))[part]
                cells[part].append(share(tower_operations(config, part, args.batch) / seconds, mode))
    print(f"\n| base tower, {args.batch} items | " + " | ".join(kinds) + " |\n|---|" + "---:|" * len(kinds))
    for part, row in cells.items():
        print(f"| {part} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
