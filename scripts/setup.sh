#!/usr/bin/env bash
# Create .venv and install moshi-tui with its exact pins (locks/<platform>.txt) and the dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) LOCK=locks/linux-x86_64.txt ;;
  Darwin-arm64) LOCK=locks/macos-arm64.txt ;;
  *) LOCK="" ;;
esac
if [ -n "$LOCK" ]; then
  # Exact versions of everything (uv pip compile output for this platform).
  .venv/bin/python -m pip install -q -r "$LOCK"
  .venv/bin/python -m pip install -q --no-deps -e .
else
  echo "no lock file for $(uname -s)-$(uname -m): installing from pyproject pins" >&2
  .venv/bin/python -m pip install -q -e '.[dev]'
fi
echo "moshi-tui installed in .venv (run: .venv/bin/moshi-tui --demo)"
