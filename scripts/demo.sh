#!/usr/bin/env bash
# Set up (first time only) and run the demo: world -> pretrain -> 4 methods -> table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ckl demo "$@"
