"""A table of metric results (metric, mean, SD, n, notes) that copies as TSV and exports as CSV."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medsynth.errors import MedsynthError
from medsynth.metrics.evaluate import MetricResult, to_csv
from napari_medsynth.notify import report_error

COLUMNS = ("metric", "mean", "SD", "n", "notes")


def _shown(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4g}"


def _exact(value: float) -> str:
    """Full precision for pasting into a spreadsheet; NaN as an empty cell."""
    return "" if math.isnan(value) else repr(float(value))


class ResultsTable(QTableWidget):
    """Read-only rows of `MetricResult`; Ctrl+C copies the whole table as TSV."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(COLUMNS)
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.horizontalHeader().setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        self.verticalHeader().setVisible(False)
        self._results: list[MetricResult] = []

    @property
    def results(self) -> list[MetricResult]:
        return list(self._results)

    def set_results(self, results: Sequence[MetricResult]) -> None:
        self._results = list(results)
        self.setRowCount(len(self._results))
        for row, r in enumerate(self._results):
            cells = (r.name, _shown(r.mean), _shown(r.sd), str(r.n), r.note)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == len(COLUMNS) - 1:
                    item.setToolTip(text)
                self.setItem(row, col, item)
        self.resizeColumnsToContents()

    def to_tsv(self) -> str:
        """Header and one line per result, tab-separated, numbers at full precision."""
        lines = ["\t".join(COLUMNS)]
        for r in self._results:
            note = r.note.replace("\t", " ").replace("\n", " ")
            lines.append("\t".join((r.name, _exact(r.mean), _exact(r.sd), str(r.n), note)))
        return "\n".join(lines) + "\n"

    def copy_to_clipboard(self) -> None:
        QApplication.clipboard().setText(self.to_tsv())

    def export_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the results (with per-item values) with `medsynth.metrics.evaluate.to_csv`, atomically."""
        return to_csv(self._results, path)

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt override
        if event.matches(QKeySequence.StandardKey.Copy):
            self.copy_to_clipboard()
        else:
            super().keyPressEvent(event)


class ResultsPanel(QWidget):
    """`ResultsTable` with "Copy" and "Export CSV..." buttons."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.table = ResultsTable()
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the table as tab-separated text (paste into a spreadsheet)")
        self.export_button = QPushButton("Export CSV...")
        self.export_button.setToolTip("Save the results with their per-item values as CSV")
        self.copy_button.clicked.connect(self.table.copy_to_clipboard)
        self.export_button.clicked.connect(self._ask_export)
        buttons = QHBoxLayout()
        buttons.addWidget(self.copy_button)
        buttons.addWidget(self.export_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        self.set_results([])

    def set_results(self, results: Sequence[MetricResult]) -> None:
        self.table.set_results(results)
        for button in (self.copy_button, self.export_button):
            button.setEnabled(bool(results))

    def _ask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export results", "results.csv", "CSV (*.csv)")
        if path:
            try:
                self.table.export_csv(path)
            except (MedsynthError, OSError) as exc:
                report_error(exc)
