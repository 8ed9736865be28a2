#!/usr/bin/env bash
# Set up (first time only) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Headless Chromium for the report's browser test (Debian's package; once, quietly).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "note: could not install chromium; tests/report/test_browser.py will be skipped" >&2
fi
# One worker per core, one thread each (tests/conftest.py), whole modules at a time so that
# a module's fixtures are built once; the longest tests start first.
exec .venv/bin/python -m pytest -q --durations=25 -n auto --dist loadscope --no-loadscope-reorder tests "$@"
