#!/usr/bin/env bash
# Build the WebUI extension's UI under both gradio versions the WebUIs ship:
#   .venv-gradio3: gradio 3.41.2 (AUTOMATIC1111 WebUI 1.10, pins fastapi 0.94 / httpx 0.24)
#   .venv-gradio4: gradio 4.40.0 (current Forge)
# Each venv is created once (idempotent: re-runs only check the pins) and holds the project
# installed without torch, which the UI tests do not need.
# Usage: .ci/gradio_matrix.sh [pytest args...]   (default: the tests/test_webui_*.py files)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# shellcheck source=.ci/venv.sh
source .ci/venv.sh

declare -A PINS=(
  [gradio3]="gradio==3.41.2 fastapi==0.94.0 httpx==0.24.1 pydantic<2 huggingface_hub<0.26"
  [gradio4]="gradio==4.40.0 fastapi==0.112.2 pydantic==2.8.2 huggingface_hub<0.26"
)
COMMON="pytest>=7.4 tqdm>=4.60"

if [ "$#" -eq 0 ]; then
  set -- tests/test_webui_*.py tests/test_settings.py tests/test_prompt_syntax.py -q
fi

status=0
for name in gradio3 gradio4; do
  prepare_venv "$name" "${PINS[$name]} $COMMON"
  venv=".venv-$name"
  echo "== $name: $("$venv/bin/python" -c 'import gradio; print("gradio", gradio.__version__)')"
  "$venv/bin/python" -m pytest -p no:cacheprovider "$@" || status=1
done
exit $status
