#!/usr/bin/env bash
# Run the generation-backend tests under the transformers versions the WebUIs pin:
#   .venv-tf430: transformers 4.30.2 (AUTOMATIC1111 WebUI 1.10), huggingface_hub 0.16 (oldest we support)
#   .venv-tf446: transformers 4.46.1 (Forge)
# The main .venv covers the latest release. Each venv is created once (idempotent: re-runs only check the
# pins) with torch 2.13.0 (a local CPU wheel here) and the project installed with --no-deps.
# KGEN_MATRIX_LLAMA_CPP=1 also installs llama-cpp-python from the index (a build from source takes 10-20
# minutes on 2 cores), KGEN_MATRIX_LLAMA_CPP=/path/to/llama_cpp_python-*.whl installs that wheel; unset, the
# llama.cpp tests skip with their reason.
# Usage: .ci/transformers_matrix.sh [pytest args...]   (default: the backend test files, -q)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# shellcheck source=.ci/venv.sh
source .ci/venv.sh

declare -A PINS=(
  # transformers 4.30's generated sentencepiece protobuf module needs protobuf 3.20.x
  [tf430]="transformers==4.30.2 tokenizers==0.13.3 huggingface_hub==0.16.4 safetensors==0.4.5 numpy<2 protobuf==3.20.3"
  [tf446]="transformers==4.46.1 tokenizers==0.20.3 huggingface_hub==0.26.2 safetensors==0.4.5 numpy<2.2 protobuf>=3.20"
)
COMMON="torch==2.13.0 sentencepiece>=0.1.99 tqdm>=4.60 pytest>=7.4 hypothesis>=6.80 gguf>=0.6"
case "${KGEN_MATRIX_LLAMA_CPP:-}" in
  "" | 0) ;;
  1) COMMON="$COMMON llama-cpp-python" ;;
  *.whl) COMMON="$COMMON $KGEN_MATRIX_LLAMA_CPP" ;;
  *) echo "KGEN_MATRIX_LLAMA_CPP must be 1 or a wheel file" >&2; exit 2 ;;
esac

if [ "$#" -eq 0 ]; then
  for file in tests/test_hf_backend.py tests/test_sampling.py tests/test_loader.py tests/test_llamacpp.py tests/test_tgts.py \
    tests/test_model_store.py; do
    if [ -f "$file" ]; then set -- "$@" "$file"; else echo "note: $file does not exist yet, not run" >&2; fi
  done
  set -- "$@" -q
fi

status=0
for name in tf430 tf446; do
  prepare_venv "$name" "${PINS[$name]} $COMMON"
  venv=".venv-$name"
  echo "== $name: $("$venv/bin/python" -c 'import transformers, huggingface_hub as h, torch
print("transformers", transformers.__version__, "huggingface_hub", h.__version__, "torch", torch.__version__)')"
  "$venv/bin/python" -m pytest -p no:cacheprovider "$@" || status=1
done
exit $status
