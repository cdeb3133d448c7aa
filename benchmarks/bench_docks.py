"""Opening each dock widget: time to its first paint, the longest freeze after it, and its minimum height.

Each dock opens in a fresh Python process (torch, the widgets' imports and any warm-up are paid the
way a user pays them: once, on the first dock they open) with a shown napari viewer holding the
MNI152 template. The clock starts at ``add_plugin_dock_widget`` and stops at the widget's first
Paint event; the GUI thread's CPU time over the same span is reported too, as it depends less on
what else the machine runs. Then a 10 ms Qt timer runs for `--after` seconds
(`bench_responsiveness.measure_gaps`): its longest gap is how long the viewer froze after the dock
painted (work left to the background must not hold the GUI thread). The dock's minimum height is
its ``minimumSizeHint`` inside napari's dock. The load average is printed before and after, since
other work competes for the two cores.

With ``--baseline DIR`` (a checkout of earlier code, e.g. ``git archive <commit> | tar -x -C DIR``),
each repeat opens the dock once with that code first on ``PYTHONPATH`` and once with the installed
code, so that both see the same load on the machine.

Run under a virtual display (one process per dock, version and repeat):

    xvfb-run -a -s "-screen 0 1600x1200x24" python benchmarks/bench_docks.py [--repeats 3] [--after 8] \
        [--baseline DIR] [--docks Train ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench_responsiveness import measure_gaps

DOCKS = ("Train", "Generate", "Lesions", "Metrics", "Reader study")


def open_once(dock: str, after_s: float) -> dict[str, float]:
    """Open `dock` in this process's viewer; return first-paint time, longest gap after it and minimum height."""
    import napari
    from napari.qt.threading import WorkerBase
    from qtpy.QtCore import QEvent, QEventLoop, QObject, QTimer
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1100)
    viewer.open_sample("napari-medsynth", "mni152")
    for _ in range(20):
        QApplication.processEvents()

    painted: list[float] = []

    class FirstPaint(QObject):
        def eventFilter(self, watched, event):  # noqa: N802 - Qt override
            if event.type() == QEvent.Type.Paint and not painted:
                painted.append((time.perf_counter(), time.thread_time()))
            return False

    watcher = FirstPaint()
    started, started_cpu = time.perf_counter(), time.thread_time()
    dock_widget, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", dock)
    returned = time.perf_counter()
    widget.installEventFilter(watcher)  # painting happens in the event loop, after the call returned
    loop = QEventLoop()
    deadline = QTimer()
    deadline.setInterval(5)
    deadline.timeout.connect(lambda: painted and loop.quit())
    deadline.start()
    loop.exec()
    deadline.stop()
    first_paint, first_paint_cpu = painted[0]

    gaps, _, _ = measure_gaps(after_s)
    result = {
        "call_ms": (returned - started) * 1000,
        "first_paint_ms": (first_paint - started) * 1000,
        "first_paint_gui_cpu_ms": (first_paint_cpu - started_cpu) * 1000,
        "longest_gap_after_ms": float(gaps.max(initial=0.0)),
        "min_height_px": dock_widget.minimumSizeHint().height(),
    }
    viewer.close()
    WorkerBase.await_workers()  # as napari does on quit: let background loading end before the process does
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--after", type=float, default=8.0, help="seconds of the gap timer after the first paint")
    parser.add_argument("--baseline", help="folder holding earlier code (napari_medsynth/, src/) to compare with")
    parser.add_argument("--docks", nargs="+", default=DOCKS, choices=DOCKS, metavar="DOCK", help="docks to open")
    parser.add_argument("--dock", help="(internal) open this dock in this process and print its figures")
    args = parser.parse_args()
    if args.dock:
        print(json.dumps(open_once(args.dock, args.after)))
        return
    print(json.dumps({"loadavg_before": os.getloadavg()}))
    versions = {"baseline": args.baseline, "current": None} if args.baseline else {"current": None}
    for dock in args.docks:
        runs: dict[str, list[dict[str, float]]] = {version: [] for version in versions}
        for _ in range(args.repeats):
            for version, path in versions.items():
                runs[version].append(open_in_process(dock, args.after, path))
        for version, measured in runs.items():
            median = {key: sorted(r[key] for r in measured)[len(measured) // 2] for key in measured[0]}
            print(json.dumps({"dock": dock, "code": version, "median": {k: round(v) for k, v in median.items()},
                              "runs": measured}))  # fmt: skip
    print(json.dumps({"loadavg_after": os.getloadavg()}))


def open_in_process(dock: str, after_s: float, baseline: str | None) -> dict[str, float]:
    """`open_once` in a fresh Python process, with `baseline`'s code first on the path when given."""
    env = dict(os.environ)
    if baseline:
        env["PYTHONPATH"] = os.pathsep.join([baseline, os.path.join(baseline, "src"), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, __file__, "--dock", dock, "--after", str(after_s)],
        capture_output=True, text=True, check=True, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
