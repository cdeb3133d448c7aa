#!/usr/bin/env bash
# The main job on embedded sample data. With a display it opens napari with the plugin's widgets and
# a sample loaded; without one it runs the same workflow under Xvfb and writes its outputs and a
# screenshot of the viewer to out/demo (or the folder given as first argument).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QT_API=${QT_API:-pyside6}
out=${1:-out/demo}
if [ -n "${DISPLAY:-}" ]; then
  exec .venv/bin/python -m napari_medsynth.demo --out "$out" --interactive
fi
exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m napari_medsynth.demo --out "$out"
