#!/usr/bin/env bash
# Create ./.venv-tf4 (or $SIGLIP_TF4_ENV) with old transformers releases for tests/test_transformers4.py (the
# files we save load there, and the reverse). Idempotent: a second run with the same pins installs nothing.
#
# One venv holds torch and what every release shares; each release lives with the tokenizers it needs in
# its own folder, .venv-tf4/transformers-<version>, that the test puts first on PYTHONPATH:
#   4.37.0  the first release with SigLIP
#   4.50.0  the first release on PyPI with SigLIP 2 (NaFlex's Siglip2* classes; the fixed-resolution
#           checkpoints' GemmaTokenizer exists since 4.38). 4.49.0's wheel has no siglip2 package: SigLIP 2
#           came out as a tag on top of 4.49 (v4.49.0-SigLIP-2), never uploaded.
#   4.57.6  the last 4.x release
# torch==2.13.0 is the CPU wheel on this project's machines (see scripts/setup-env.sh); only wheels are
# installed (--only-binary), so nothing is compiled.
set -euo pipefail
cd "$(dirname "$0")/.."

env="${SIGLIP_TF4_ENV:-.venv-tf4}"
# huggingface_hub 0.36: the last before 1.0, which every 4.x release requires (<1.0)
shared=(torch==2.13.0 numpy==2.4.6 safetensors==0.8.0 sentencepiece==0.2.3 protobuf==7.36.2 pillow==13.0.0
        huggingface_hub==0.36.2 regex==2026.11.19 requests==2.34.2 pyyaml==6.0.4 packaging==26.4
        tqdm==4.70.1 filelock==4.3.2)
releases=("4.37.0 0.15.2" "4.50.0 0.21.4" "4.57.6 0.22.2")  # transformers, the tokenizers it pins

pip_install() { "$env/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary :all: "$@"; }

stamp="$env/.shared-pins"
pins="$(python3 --version) ${shared[*]}"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$pins" ]]; then
  python3 -m venv "$env"
  pip_install "${shared[0]}"  # torch first: the CPU wheel on disk
  pip_install "${shared[@]}"
  echo "$pins" >"$stamp"
fi
for release in "${releases[@]}"; do
  read -r transformers tokenizers <<<"$release"
  target="$env/transformers-$transformers"
  if [[ ! -f "$target/.complete" ]]; then
    rm -rf "$target"
    pip_install --no-deps --target "$target" "transformers==$transformers" "tokenizers==$tokenizers"
    touch "$target/.complete"
  fi
done
echo "$env: transformers $(cd "$env" && echo transformers-*/ | sed 's/transformers-//g; s:/::g')"
