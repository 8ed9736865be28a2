#!/usr/bin/env bash
# Create .venv and install ckl with its test tools, once (re-run when pyproject changes).
# torch==2.13.0 (CPU) goes in first and explicitly: a plain `torch` requirement would pull
# a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.ckl-installed
want=$(cat pyproject.toml scripts/constraints.txt | sha1sum | cut -d' ' -f1)
# pip's and setuptools' notes (an editable install's "be careful with folders" banner,
# index locations) go to a log, printed only when a step fails.
log=.venv/setup.log
quiet() {
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup failed: $*" >&2
    exit 1
  fi
}
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >"$log" 2>&1 || echo "note: could not upgrade pip (see $log); going on" >&2
  quiet .venv/bin/python -m pip install --quiet "torch==2.13.0"
  # the tested versions (scripts/constraints.txt): a package release must not change what the tests pretrain
  quiet .venv/bin/python -m pip install --quiet -c scripts/constraints.txt -e ".[test]"
  .venv/bin/python -c "import torch, transformers, peft, accelerate, ckl"
  echo "$want" > "$stamp"
fi
