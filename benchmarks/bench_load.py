"""Load time and peak memory of a base-size checkpoint: siglip vs transformers `from_pretrained`.

A random google/siglip-base-patch16-224-shaped model (203M parameters, 813 MB in float32) is saved once with
transformers' `save_pretrained`. Each load runs in a fresh subprocess (so the page cache is warm but the
Python heap is clean), alternating libraries; we report the median wall time of `from_pretrained` and the
peak resident memory (VmHWM) added over the process's size after imports, after every weight has been
read once (memory-mapped weights are only resident once touched).

    python benchmarks/bench_load.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import torch
lib, path = sys.argv[1], sys.argv[2]
if lib == "siglip":
    from siglip import SiglipModel
else:
    import transformers
    transformers.logging.set_verbosity_error()
    from transformers import SiglipModel
torch.set_num_threads(2)
def status_kb(field):  # VmHWM is this process's peak RSS (ru_maxrss would include the parent's)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field))
base = status_kb("VmRSS")
start = time.perf_counter()
model = SiglipModel.from_pretrained(path)
seconds = time.perf_counter() - start
params = sum(p.numel() for p in model.parameters())
checksum = sum(float(p.float().sum()) for p in model.parameters())  # touch every weight once
peak = status_kb("VmHWM")
print(json.dumps({"seconds": seconds, "peak_added_mb": (peak - base) / 1024, "params": params}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        transformers.SiglipModel(transformers.SiglipConfig()).save_pretrained(tmp)
        size_mb = (Path(tmp) / "model.safetensors").stat().st_size / 2**20
        results: dict[str, list[dict]] = {"siglip": [], "transformers": []}
        for _ in range(args.repeats):
            for lib in results:
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, lib, tmp], capture_output=True, text=True, check=True
                )
                results[lib].append(json.loads(out.stdout.strip().splitlines()[-1]))

    print(
        f"checkpoint: {size_mb:.0f} MiB model.safetensors, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {args.repeats} loads each\n"
    )
    print("| library | load time (median s) | peak memory added (median MiB) | peak / checkpoint size |")
    print("|---|---|---|---|")
    for lib, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = statistics.median(r["peak_added_mb"] for r in runs)
        print(f"| {lib} | {seconds:.3f} | {peak:.0f} | {peak / size_mb:.2f}x |")
    ratio = statistics.median(r["seconds"] for r in results["transformers"]) / statistics.median(
        r["seconds"] for r in results["siglip"]
    )
    print(f"\nsiglip loads {ratio:.2f}x as fast as transformers")


if __name__ == "__main__":
    main()
