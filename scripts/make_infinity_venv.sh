#!/usr/bin/env bash
# The venv in which benchmarks/bench_serve.py runs infinity-emb beside `siglip serve` (issue 26).
#
#     bash scripts/make_infinity_venv.sh [/work/venvs/infinity]
#     python benchmarks/bench_serve.py --infinity /work/venvs/infinity ...
#
# torch first, its CPU build, and held there by a constraint: infinity-emb's `vision` extra (colpali-engine)
# would replace it with torch 2.8's multi-GB CUDA build. This machine's pip finds the CPU wheel in its
# find-links (/opt/wheels); elsewhere give PyPI's CPU index: TORCH_INDEX=https://download.pytorch.org/whl/cpu.
# Then infinity-emb with its `server` extra and, by hand, what its CLIP-style path needs from the `torch` and
# `vision` extras (sentence-transformers, transformers, Pillow, and aiohttp for images; not colpali-engine, timm or torchvision, which
# only ColPali and timm models use), pinned to the versions this project measured.
set -euo pipefail
venv=${1:-/work/venvs/infinity}
python3 -m venv "$venv"
pip=("$venv/bin/pip" install --quiet)
"${pip[@]}" torch==2.13.0 ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
"$venv/bin/python" -W ignore -c "import torch; v = torch.__version__; assert v.endswith('+cpu'), f'torch {v} is not the CPU build'"
constraint=$(mktemp)
trap 'rm -f "$constraint"' EXIT
"$venv/bin/pip" freeze | grep -i '^torch==' >"$constraint"
"${pip[@]}" -c "$constraint" "infinity-emb[server]==0.0.78" "sentence-transformers==3.4.1" \
    "transformers[sentencepiece]==4.57.6" "pillow==13.0.0" "numpy==1.26.4" "aiohttp==3.14.5"
"$venv/bin/pip" freeze | grep -iE '^(torch|infinity[-_]emb|sentence-transformers|transformers|fastapi|uvicorn|pillow|numpy|aiohttp)=='
