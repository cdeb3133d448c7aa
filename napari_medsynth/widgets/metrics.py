"""The Metrics dock widget: compare synthetic images with real ones (PSNR, SSIM, SWD, FID, ...).

The widget only gathers inputs and shows results: `measure` (a plain generator over
`medsynth.metrics.evaluate`) runs in the plugin's background runner (`napari_medsynth.workers`) and
yields progress; its results reach the table and the temporal plots on the GUI thread. Items follow
`medsynth evaluate`: time frames are items, a 2D image is one item, a 3D volume one item unless "3D
volumes slice by slice" is on.
Layers are read, never modified: the worker makes float32 copies of their data.

Each metric is computed on its own: one that cannot run (MS-SSIM on a small image, FID of one image,
paired metrics on sets of different sizes) becomes its row's note and the others are kept. The
distribution metrics compare sets of different image sizes after `medsynth.metrics.resample` brings
their images to one side (the "Mixed sizes" option: ``"pad"``, the default, or ``"stretch"``;
docs/metrics.md). Real,
synthetic and the metric boxes come first; mask, data range, slicing and resampling are under
"Advanced settings", with "Fusion source B": when it is set, the synthetic images are taken as the
fusions of the real images (source A) with it, and the table shows the fusion figures of
`medsynth.metrics.evaluate.evaluate_fusion` (SF, SSIM to each source, SCD) instead of the ticked metrics.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path

import napari
import numpy as np
from napari.layers import Image, Labels, Layer
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QWidget,
)

from medsynth.metrics.items import image_items, load_items
from medsynth.errors import InputError
from medsynth.io.image import MedImage
from medsynth.metrics.evaluate import MetricResult, available_metrics, evaluate, evaluate_fusion
from medsynth.metrics.resample import DEFAULT_METHOD, METHODS
from napari_medsynth.layers import layer_image
from napari_medsynth.notify import report_error
from napari_medsynth.workers import BackgroundRun, EventWorker, Failed, RunState, until_stopped
from napari_medsynth.widgets.dock import advanced_group, reset_button, scrolled_content, wrap
from napari_medsynth.widgets.plot import LinePlot
from napari_medsynth.widgets.results_table import ResultsPanel
from napari_medsynth.widgets.source_picker import SourcePicker

Progress = tuple[int, int, str]
Source = MedImage | Path
DEFAULT_METRICS = ("psnr", "ssim", "swd")
# Per-frame-pair curves of the temporal metric, by unit (curve keys from TemporalReport.curves()).
INTENSITY_CURVES = ("diff_real", "diff_fake", "warp_error_real", "warp_error_fake")
FLOW_CURVES = ("flow_real", "flow_fake")


def as_batch(source: Source, *, slices: bool, what: str) -> np.ndarray:
    """A float32 batch ``(N, H, W)`` or ``(N, D, H, W)`` of an image or a path, as `medsynth evaluate` makes it."""
    return load_items([str(source)], slices, what) if isinstance(source, Path) else image_items(source, slices)


def is_sequence(layer: Layer) -> bool:
    """True for a layer whose first axis is time (2D+t or 3D+t)."""
    return "t" in layer.metadata.get("medsynth", {}).get("axes", "")


def measure(
    real: Source, fake: Source, *, metrics: Sequence[str], mask: np.ndarray | None = None,
    data_range: float | None = None, slices: bool = False, resample: str = DEFAULT_METHOD,
    source_b: Source | None = None,
) -> Generator[Progress, None, list[MetricResult]]:
    """Evaluate `metrics` of `fake` against `real`, yielding ``(done, total, label)`` before each metric.

    `real` and `fake` are images (see `layer_image`) or paths, made into batches by `as_batch`; the
    distribution metrics see their images brought to one size by `resample` (`medsynth.metrics.resample`).
    Returns the `MetricResult` list of `medsynth.metrics.evaluate.evaluate`, with a `failed` row for
    each metric that raised. With `source_b`, `fake` holds the fusions of `real` (source A) and
    `source_b`, and the rows are those of `medsynth.metrics.evaluate.evaluate_fusion`.
    """
    if source_b is not None:
        yield 0, 2, "reading images"
        batches = [as_batch(source, slices=slices, what=what) for source, what in
                   ((fake, "fused"), (real, "source A"), (source_b, "source B"))]  # fmt: skip
        yield 1, 2, "fusion figures"
        results = evaluate_fusion(*batches)
        yield 2, 2, "done"
        return results
    names = list(dict.fromkeys(metrics))
    if not names:
        raise InputError("no metric is ticked; tick at least one metric to compute")
    total = len(names) + 1
    yield 0, total, "reading images"
    real_items = as_batch(real, slices=slices, what="real")
    fake_items = as_batch(fake, slices=slices, what="fake")
    results: list[MetricResult] = []
    for done, name in enumerate(names, start=1):
        yield done, total, name
        # "ssim" with a mask also reports ssim_inside and ssim_outside; never compute one twice.
        if any(r.name == name for r in results):
            continue
        try:
            results.extend(evaluate(real_items, fake_items, metrics=(name,), mask=mask, data_range=data_range, resample=resample))
        except Exception as exc:  # noqa: BLE001 - one metric that cannot run must not discard the others
            results.append(failed(name, exc))
    yield total, total, "done"
    return results


def failed(name: str, exc: Exception) -> MetricResult:
    """The row of metric `name` that raised `exc`: no value, the error as its note."""
    return MetricResult(name, float("nan"), float("nan"), 0, [], f"failed: {exc}", {"error": f"{type(exc).__name__}: {exc}"})


class MetricsWidget(QWidget):
    """Pick real and synthetic images (layers or files), an optional mask and metrics; run; see the table."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.run = BackgroundRun(self)
        self.real = SourcePicker(napari_viewer, (Image,))
        self.fake = SourcePicker(napari_viewer, (Image,))
        self.mask = SourcePicker(napari_viewer, (Labels, Image), allow_path=False, allow_none=True)
        self.source_b = SourcePicker(napari_viewer, (Image,), allow_none=True)
        self.source_b.setToolTip(
            "Set it to measure fusions: Real is source A, Synthetic its fusion with this image (SF, SSIM to each "
            "source, SCD; docs/metrics.md)"
        )
        self.slices = QCheckBox("3D volumes slice by slice")
        self.slices.setToolTip("Off: each 3D volume is one item (3D SSIM); on: each slice is an item")
        self.data_range = QDoubleSpinBox()
        self.data_range.setRange(0.0, 1e9)
        self.data_range.setDecimals(3)
        self.data_range.setSpecialValueText("real set's max - min")
        self.data_range.setToolTip("Intensity span L for PSNR and SSIM, in the data's units (e.g. 4095 for CT in HU)")
        self.resample = QComboBox()
        for method, text in METHODS.items():
            self.resample.addItem(text, method)
        self.resample.setToolTip(
            "Distribution metrics (SWD, FID, KID, temporal) on sets of different image sizes: both are brought to "
            "the smaller of the two longer sides (see docs/metrics.md)"
        )
        self.metric_boxes = self._metric_boxes()
        self.run_button = QPushButton("Compute")
        self.run_button.clicked.connect(self.start)
        self.progress = QProgressBar()
        self.status = QLabel("")
        wrap(self.status)
        self.results = ResultsPanel()
        self.intensity_plot = LinePlot("Temporal: per frame pair", "frame pair", "data-range units")
        self.flow_plot = LinePlot("Temporal: optical flow", "frame pair", "pixels per frame")
        for plot in (self.intensity_plot, self.flow_plot):
            plot.setMinimumHeight(180)
            plot.hide()
        self.real.changed.connect(self._suggest_temporal)
        self._layout()
        self.reset_defaults()
        self.run.state_changed.connect(self._show_state)

    def _metric_boxes(self) -> dict[str, QCheckBox]:
        boxes = {}
        for name, definition in available_metrics().items():
            box = QCheckBox(name)
            box.setToolTip(definition)
            boxes[name] = box
        return boxes

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow("Real", self.real)
        form.addRow("Synthetic", self.fake)
        group = QGroupBox("Metrics")
        grid = QGridLayout(group)
        for k, box in enumerate(self.metric_boxes.values()):
            grid.addWidget(box, k // 3, k % 3)
        advanced = QWidget()
        more = QFormLayout(advanced)
        more.addRow("Mask", self.mask)
        more.addRow("Data range", self.data_range)
        more.addRow("", self.slices)
        more.addRow("Mixed sizes", self.resample)
        more.addRow("Fusion source B", self.source_b)
        more.addRow("", reset_button(self.reset_defaults))
        layout = scrolled_content(self)
        layout.addLayout(form)
        layout.addWidget(group)
        layout.addWidget(advanced_group("Advanced settings", advanced))
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.results)
        layout.addWidget(self.intensity_plot)
        layout.addWidget(self.flow_plot)
        layout.addStretch()

    def reset_defaults(self) -> None:
        """Tick the default metrics (and temporal for a sequence); no mask, data range, slicing; default resampling."""
        for name, box in self.metric_boxes.items():
            box.setChecked(name in DEFAULT_METRICS)
        self.mask.select(None)
        self.source_b.select(None)
        self.data_range.setValue(0.0)
        self.slices.setChecked(False)
        self.resample.setCurrentIndex(self.resample.findData(DEFAULT_METHOD))
        self._suggest_temporal()

    def chosen_metrics(self) -> list[str]:
        return [name for name, box in self.metric_boxes.items() if box.isChecked()]

    def _suggest_temporal(self) -> None:
        """Tick the temporal metric when the real images are a sequence (its items are frames)."""
        real = self.real.selected()
        if isinstance(real, Layer) and "temporal" in self.metric_boxes:
            self.metric_boxes["temporal"].setChecked(is_sequence(real))

    def _source(self, picker: SourcePicker, what: str) -> Source:
        choice = picker.selected()
        if choice is None:
            raise InputError(f"no {what} images chosen; pick a layer or give a file or folder")
        if isinstance(choice, Path):
            return choice
        return layer_image(choice)

    def arguments(self) -> dict:
        """The worker's arguments, all gathered here in the GUI thread (the worker reads no widget)."""
        mask_layer = self.mask.selected()
        fusion = self.source_b.selected() is not None
        return {
            "real": self._source(self.real, "real"),
            "fake": self._source(self.fake, "synthetic"),
            "metrics": self.chosen_metrics(),
            "mask": None if mask_layer is None else np.asarray(mask_layer.data) != 0,
            "data_range": self.data_range.value() or None,
            "slices": self.slices.isChecked(),
            "resample": self.resample.currentData(),
            "source_b": self._source(self.source_b, "fusion source B") if fusion else None,
        }

    def start(self) -> EventWorker | None:
        """Run the chosen metrics in a worker; errors in the inputs become notifications."""
        if self.run.worker is not None:
            return self.run.worker
        try:
            kwargs = self.arguments()
        except ValueError as exc:  # InputError, and layers that are no medical image (5D, ...)
            report_error(exc)
            return None
        self.results.set_results([])
        return self.run.start(lambda control: until_stopped(measure(**kwargs), control), self._on_progress, self.show_results)

    def _on_progress(self, step: Progress | Failed) -> None:
        if isinstance(step, Failed):
            report_error(step.error)
            self.status.setText("failed")
            return
        done, total, label = step
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        self.status.setText(label)

    def show_results(self, results: list[MetricResult] | None) -> None:
        if results is None:
            return
        self.results.set_results(results)
        curves = next((r.details["curves"] for r in results if "curves" in r.details), None)
        for plot, names in ((self.intensity_plot, INTENSITY_CURVES), (self.flow_plot, FLOW_CURVES)):
            plot.clear()
            for name in names if curves else ():
                plot.set_series(name, range(1, len(curves[name]) + 1), curves[name])
            plot.redraw()
            plot.setVisible(bool(curves))

    def _show_state(self, state: RunState) -> None:
        self.run_button.setEnabled(state is RunState.IDLE)

    def event(self, event: QEvent) -> bool:
        # napari's close button only takes the widget out of its dock (no close event, no deletion).
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self._quit_worker()
            for picker in (self.real, self.fake, self.mask, self.source_b):
                picker.detach()
            self.deleteLater()
        return super().event(event)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        self._quit_worker()
        super().closeEvent(event)

    def _quit_worker(self) -> None:
        # Ask the computation to end after the current metric, without waiting: results of a worker
        # that outlives its widget go nowhere.
        self.run.shutdown(0.0)
