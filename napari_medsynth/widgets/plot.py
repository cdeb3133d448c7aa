"""A small line-plot widget (matplotlib on a Qt canvas) for loss curves and per-frame metric curves."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from qtpy.QtWidgets import QVBoxLayout, QWidget

MIN_HEIGHT_PX = 220
LEGEND_COLUMNS = 3


class LinePlot(QWidget):
    """Named series of (x, y) points. Redraws are batched: call `redraw()` after adding points.

    Lines are updated in place and the layout is computed only when a series appears or the canvas is
    resized: re-plotting or re-laying out the figure on every redraw costs the GUI thread hundreds of
    milliseconds while training runs. The legend sits under the axes, in columns, so that it never
    covers a curve.
    """

    def __init__(self, title: str = "", xlabel: str = "step", ylabel: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.figure = Figure(figsize=(4, 2.5))
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(MIN_HEIGHT_PX)  # a crowded dock must not squeeze the curves away
        self.axes = self.figure.add_subplot(111)
        self.axes.set_title(title, fontsize=9)
        self.axes.set_xlabel(xlabel, fontsize=8)
        self.axes.set_ylabel(ylabel, fontsize=8)
        self.axes.tick_params(labelsize=7)
        self._series: dict[str, tuple[list[float], list[float]]] = {}
        self._lines: dict[str, object] = {}
        self._legend = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self._place_legend()
        # A new size needs new margins; resizing a dock is rare, unlike redraws.
        self.canvas.mpl_connect("resize_event", lambda _event: self._place_legend())

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
        for line in self._lines.values():
            line.remove()
        self._lines.clear()
        self._place_legend()
        self.redraw()

    def _place_legend(self) -> None:
        """Put the legend of the current lines under the axes and fit the axes above it, once."""
        if self._legend is not None:
            self._legend.remove()
            self._legend = None
        engine = ConstrainedLayoutEngine(h_pad=0.02, w_pad=0.02)
        self.figure.set_layout_engine(engine)
        if self._lines:
            self._legend = self.figure.legend(
                loc="outside lower center", ncols=LEGEND_COLUMNS, fontsize=7, frameon=False
            )
        engine.execute(self.figure)
        self.figure.set_layout_engine("none")

    def redraw(self) -> None:
        added = False
        for name, (xs, ys) in self._series.items():
            if name in self._lines:
                self._lines[name].set_data(xs, ys)
            else:
                (self._lines[name],) = self.axes.plot(xs, ys, label=name, linewidth=1)
                added = True
        if added:
            self._place_legend()
        self.axes.relim()
        self.axes.autoscale_view()
        self.canvas.draw_idle()
