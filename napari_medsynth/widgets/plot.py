"""A small line-plot widget (matplotlib on a Qt canvas) for loss curves and per-frame metric curves."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QVBoxLayout, QWidget


class LinePlot(QWidget):
    """Named series of (x, y) points. Redraws are batched: call `redraw()` after adding points."""

    def __init__(self, title: str = "", xlabel: str = "step", ylabel: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.figure = Figure(figsize=(4, 2.5), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = self.figure.add_subplot(111)
        self._labels = (title, xlabel, ylabel)
        self._series: dict[str, tuple[list[float], list[float]]] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.clear()

    @property
    def series(self) -> dict[str, tuple[list[float], list[float]]]:
        """The plotted data by series name (copies)."""
        return {name: (list(x), list(y)) for name, (x, y) in self._series.items()}

    def add_points(self, x: float, values: dict[str, float]) -> None:
        """Append one x value with a y value per series (new series appear on first use)."""
        for name, y in values.items():
            xs, ys = self._series.setdefault(name, ([], []))
            xs.append(float(x))
            ys.append(float(y))

    def set_series(self, name: str, x: Sequence[float], y: Sequence[float]) -> None:
        self._series[name] = ([float(v) for v in x], [float(v) for v in y])

    def clear(self) -> None:
        self._series.clear()
        self.redraw()

    def redraw(self) -> None:
        title, xlabel, ylabel = self._labels
        self.axes.clear()
        self.axes.set_title(title, fontsize=9)
        self.axes.set_xlabel(xlabel, fontsize=8)
        self.axes.set_ylabel(ylabel, fontsize=8)
        self.axes.tick_params(labelsize=7)
        for name, (xs, ys) in self._series.items():
            self.axes.plot(xs, ys, label=name, linewidth=1)
        if self._series:
            self.axes.legend(fontsize=7, loc="best")
        self.canvas.draw_idle()
