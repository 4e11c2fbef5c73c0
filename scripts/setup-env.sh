#!/usr/bin/env bash
# Create ./.venv with siglip installed (editable). `--test` adds the test tools and reference oracles.
#
# torch is installed first and pinned: `torch==2.13.0` is the CPU wheel this project's machines carry on disk;
# an unpinned `torch` requirement would pull a multi-GB CUDA build instead.
set -euo pipefail
cd "$(dirname "$0")/.."

extra=""
[[ "${1:-}" == "--test" ]] && extra="[test]"

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".${extra}"
