# Sourced by the matrix scripts: prepare_venv NAME "PACKAGES..." creates .venv-NAME once and (re)installs the
# packages and the project (--no-deps) only when the pins changed since the last run. Needs $PYTHON.
prepare_venv() {
  local venv=".venv-$1" want="$2"
  local stamp="$venv/.pins"
  if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install -q --disable-pip-version-check $want
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
    echo "$want" > "$stamp"
  fi
}
