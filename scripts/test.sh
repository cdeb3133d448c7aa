#!/usr/bin/env bash
# Runs the whole test suite headless (pytest-xvfb starts a virtual X server for the napari tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QT_API=${QT_API:-pyside6}
exec .venv/bin/python -m pytest "$@"
