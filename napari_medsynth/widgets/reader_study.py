"""The Reader study dock widget: a blinded visual Turing test in the viewer.

The session itself (items, order, the durable CSV, statistics) is `medsynth.metrics.reader_session`;
this widget shows the current item as one neutral image layer and turns key presses (R = real,
S = synthetic) and button clicks into answers. While a study runs, the other layers and the sliders
are hidden so that their names, pixels and slice positions give nothing away; leaving the study
(pause, end, or closing the widget) removes the study layer, shows them again and unbinds the keys.
Source layers are never modified: items are read from them and shown as display copies.

Which items a study holds (every slice, or only those with enough foreground; as many real as
synthetic) is the core's choice (`build_items`): the options appear when the core offers them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Layer
from napari.utils.notifications import show_warning
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from medsynth.errors import InputError, MedsynthError
from medsynth.metrics.reader_session import (
    REAL,
    SYNTHETIC,
    ReaderSession,
    answers_by_rater,
    build_items,
    display_image,
    images_from_paths,
    size_hint,
    study_results,
)
from napari_medsynth.notify import report_error
from napari_medsynth.widgets.dock import advanced_group, reset_button, scrolled_content, wrap
from napari_medsynth.widgets.results_table import ResultsPanel
from napari_medsynth.widgets.source_picker import SourcePicker

DISPLAY_LAYER = "Reader study"
SUGGESTED_MIN_FOREGROUND = 0.05
"""What training keeps (docs/training.md): 137 of the MNI152 template's 189 axial slices."""


def offered_options() -> set[str]:
    """The item-selection options of `build_items` in this version of the core (``balance``, ``min_foreground``)."""
    return set(inspect.signature(build_items).parameters) & {"balance", "min_foreground"}


def named_arrays(choice: Layer | Path | None, what: str) -> list[tuple[str, np.ndarray]]:
    """The images of a layer or a path as (name, (H, W) or (N, H, W) array) pairs for `build_items`."""
    if choice is None:
        raise InputError(f"no {what} images chosen; pick a layer or give a file or folder")
    if isinstance(choice, Path):
        return images_from_paths([choice])
    if getattr(choice, "rgb", False):
        raise InputError(f"layer {choice.name!r} is a colour image; the reader study shows grayscale images")
    return [(choice.name, np.asarray(choice.data))]


class ReaderStudyWidget(QWidget):
    """Choose real and synthetic sources, the rater and the answers CSV; answer item by item."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: ReaderSession | None = None
        self._display: Image | None = None
        self._hidden: dict[Layer, bool] = {}
        self._unbound: dict[str, Callable | None] = {}
        self.real = SourcePicker(napari_viewer, (Image,))
        self.fake = SourcePicker(napari_viewer, (Image,))
        self.rater = QLineEdit()
        self.rater.setPlaceholderText("your name or initials")
        self.csv_path = QLineEdit()
        self.csv_path.setPlaceholderText("answers CSV (one per rater)")
        self.csv_browse = QPushButton("Browse...")
        self.csv_browse.clicked.connect(self._browse_csv)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Study seed: the same seed and rater give the same order, so a session can resume")
        self.balance = QCheckBox("Balance real and synthetic trials")
        self.balance.setToolTip("As many real as synthetic images, the larger set subsampled with the study seed")
        self.min_foreground = QDoubleSpinBox()
        self.min_foreground.setRange(0.0, 0.99)
        self.min_foreground.setSingleStep(0.01)
        self.min_foreground.setSpecialValueText("keep every slice")
        self.min_foreground.setToolTip(
            f"Skip near-empty slices (air around a head): keep those with at least this fraction of foreground "
            f"pixels, by training's rule; {SUGGESTED_MIN_FOREGROUND} keeps what training keeps"
        )
        self.start_button = QPushButton("Start / resume")
        self.start_button.clicked.connect(self.start)
        self.real_button = QPushButton("Real (R)")
        self.real_button.clicked.connect(self.answer_real)
        self.synthetic_button = QPushButton("Synthetic (S)")
        self.synthetic_button.clicked.connect(self.answer_synthetic)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setToolTip("Leave the study; every answer is saved and Start / resume goes on from here")
        self.pause_button.clicked.connect(self.stop)
        self.compare_button = QPushButton("Compare raters...")
        self.compare_button.setToolTip("Statistics of several raters' CSVs and the agreement between them")
        self.compare_button.clicked.connect(self._ask_compare)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m")
        self.status = QLabel("")
        wrap(self.status)
        self.results = ResultsPanel()
        self._hidden_sliders = False
        self._layout()
        self.reset_defaults()
        self._set_running(False)

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow("Real", self.real)
        form.addRow("Synthetic", self.fake)
        form.addRow("Rater", self.rater)
        csv_row = QHBoxLayout()
        csv_row.addWidget(self.csv_path)
        csv_row.addWidget(self.csv_browse)
        form.addRow("Answers CSV", csv_row)
        advanced = QWidget()
        more = QFormLayout(advanced)
        more.addRow("Seed", self.seed)
        offered = offered_options()
        if "balance" in offered:
            more.addRow("", self.balance)
        if "min_foreground" in offered:
            more.addRow("Skip near-empty", self.min_foreground)
        more.addRow("", reset_button(self.reset_defaults))
        answers = QHBoxLayout()
        answers.addWidget(self.real_button)
        answers.addWidget(self.synthetic_button)
        layout = scrolled_content(self)
        layout.addLayout(form)
        layout.addWidget(advanced_group("Advanced settings", advanced))
        layout.addWidget(self.start_button)
        layout.addWidget(self.progress)
        layout.addLayout(answers)
        layout.addWidget(self.pause_button)
        layout.addWidget(self.status)
        layout.addWidget(self.results)
        layout.addWidget(self.compare_button)
        layout.addStretch()

    def reset_defaults(self) -> None:
        """Seed 0, every slice kept, real and synthetic trials as given (the rater and the CSV stay)."""
        self.seed.setValue(0)
        self.balance.setChecked(False)
        self.min_foreground.setValue(0.0)

    def item_options(self) -> dict[str, Any]:
        """The keyword arguments of `build_items` for the options the core offers."""
        offered = offered_options()
        options: dict[str, Any] = {}
        if "balance" in offered:
            options.update(balance=self.balance.isChecked(), seed=self.seed.value())
        if "min_foreground" in offered:
            options["min_foreground"] = self.min_foreground.value()
        return options

    def start(self) -> ReaderSession | None:
        """Open (or resume) the rater's session and show the first unanswered item."""
        if self.session is not None:
            return self.session
        try:
            items = build_items(
                named_arrays(self.real.selected(), "real"),
                named_arrays(self.fake.selected(), "synthetic"),
                **self.item_options(),
            )
            if not self.csv_path.text().strip():
                raise InputError("no answers CSV given; enter a file name for this rater's answers")
            session = ReaderSession(items, self.rater.text(), self.csv_path.text().strip(), seed=self.seed.value())
        except (MedsynthError, OSError) as exc:
            report_error(exc)
            return None
        hint = size_hint(items)
        if hint:
            show_warning(f"reader study: {hint}")
        self.session = session
        if session.done:
            self._finish()
            return session
        self._enter_study_mode()
        self._show_current()
        return session

    def answer(self, answer: str) -> None:
        """Record `answer` for the item on screen and show the next one (or the statistics)."""
        if self.session is None or self.session.done:
            return
        try:
            self.session.answer(answer)
        except (MedsynthError, OSError) as exc:
            report_error(exc)
            return
        if self.session.done:
            self._finish()
        else:
            self._show_current()

    # Bound methods rather than lambdas: Qt connections hold them weakly, so no cycle keeps the widget alive.
    def answer_real(self) -> None:
        self.answer(REAL)

    def answer_synthetic(self) -> None:
        self.answer(SYNTHETIC)

    def _on_key_real(self, viewer: napari.viewer.Viewer) -> None:
        self.answer(REAL)

    def _on_key_synthetic(self, viewer: napari.viewer.Viewer) -> None:
        self.answer(SYNTHETIC)

    def stop(self) -> None:
        """Leave study mode; the answers stay in the CSV, so Start / resume goes on where this stopped."""
        self._leave_study_mode()
        self.session = None
        self._set_running(False)

    def compare_raters(self, paths: Sequence[str | Path]) -> None:
        """Show the statistics of every rater in `paths` (their CSVs) and the agreement between them."""
        try:
            self.results.set_results(study_results(answers_by_rater(paths)))
        except (MedsynthError, OSError) as exc:
            report_error(exc)

    def _finish(self) -> None:
        session = self.session
        self.stop()
        self._update_progress(session)
        self.status.setText(f"All {session.n_total} items answered by {session.rater}; answers in {session.log.path}")
        self.results.set_results(study_results({session.rater: session.log.answers}))

    def _show_current(self) -> None:
        image = display_image(self.session.current.image())
        if self._display is None or self._display not in self.viewer.layers:
            self._display = self.viewer.add_image(image, name=DISPLAY_LAYER, colormap="gray", contrast_limits=(0, 1))
        else:
            self._display.data = image
            self._display.contrast_limits = (0, 1)
        self.viewer.reset_view()
        self._update_progress(self.session)
        self.status.setText("Is this image real or synthetic? Press R or S.")

    def _update_progress(self, session: ReaderSession) -> None:
        self.progress.setRange(0, session.n_total)
        self.progress.setValue(session.n_answered)

    def _enter_study_mode(self) -> None:
        self._hidden = {layer: layer.visible for layer in self.viewer.layers}
        for layer in self._hidden:
            layer.visible = False
        self._show_sliders(False)
        for key, handler in (("R", self._on_key_real), ("S", self._on_key_synthetic)):
            self._unbound[key] = self.viewer.bind_key(key, handler, overwrite=True)
        self._set_running(True)

    def _leave_study_mode(self) -> None:
        for key, previous in self._unbound.items():
            self.viewer.bind_key(key, None)
            if previous is not None:
                self.viewer.bind_key(key, previous)
        self._unbound = {}
        if self._display is not None and self._display in self.viewer.layers:
            self.viewer.layers.remove(self._display)
        self._display = None
        for layer, visible in self._hidden.items():
            if layer in self.viewer.layers:
                layer.visible = visible
        self._hidden = {}
        self._show_sliders(True)

    def _show_sliders(self, shown: bool) -> None:
        """Hide or show the viewer's sliders: a study volume's slice position would say which item is real.

        napari has no public switch for them, so this reaches its Qt dims widget.
        """
        sliders = self.viewer.window._qt_viewer.dims
        if not shown:
            self._hidden_sliders = self._hidden_sliders or not sliders.isHidden()
            sliders.hide()
        elif self._hidden_sliders:
            sliders.show()
            self._hidden_sliders = False

    def _set_running(self, running: bool) -> None:
        for control in (self.real_button, self.synthetic_button, self.pause_button):
            control.setEnabled(running)
        for control in (self.start_button, self.real, self.fake, self.rater, self.csv_path, self.csv_browse, self.seed,
                        self.balance, self.min_foreground):  # fmt: skip
            control.setEnabled(not running)

    def _browse_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Answers CSV", self.csv_path.text() or "answers.csv", "CSV (*.csv)",
            options=QFileDialog.Option.DontConfirmOverwrite,
        )
        if path:
            self.csv_path.setText(path)

    def _ask_compare(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Raters' answer CSVs", "", "CSV (*.csv)")
        if paths:
            self.compare_raters(paths)

    def event(self, event: QEvent) -> bool:
        # napari's close button only takes the widget out of its dock (no close event, no deletion):
        # leave the study and delete the widget, or it lingers unparented until Qt is torn down.
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.stop()
            for picker in (self.real, self.fake):
                picker.detach()
            self.deleteLater()
        return super().event(event)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.stop()
        super().closeEvent(event)
