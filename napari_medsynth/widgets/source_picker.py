"""Choosing where images come from: a layer of the viewer, or a file or folder on disk."""

from __future__ import annotations

from pathlib import Path

import napari
from napari.layers import Image, Layer
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QVBoxLayout, QWidget

NONE_TEXT = "(none)"
PATH_TEXT = "File or folder..."
FILE_FILTER = "NIfTI or DICOM (*.nii *.nii.gz *.dcm *.dicom *.ima);;All files (*)"


class SourcePicker(QWidget):
    """A combo box of the viewer's layers of `layer_types`, optionally "(none)" and "File or folder...".

    Choosing "File or folder..." shows a path field with "File..." and "Folder..." buttons (Qt's dialogs
    pick either a file or a folder, never both). `selected()` is the chosen layer, a `Path`, or None.
    """

    changed = Signal()

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        layer_types: tuple[type[Layer], ...] = (Image,),
        *,
        allow_path: bool = True,
        allow_none: bool = False,
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self._viewer = viewer
        self._layer_types = layer_types
        self._extra = ([NONE_TEXT] if allow_none else []) + ([PATH_TEXT] if allow_path else [])
        self.combo = QComboBox()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("NIfTI or DICOM file, or a folder of DICOM files")
        self.file_button = QPushButton("File...")
        self.file_button.setToolTip("Choose one NIfTI or DICOM file")
        self.file_button.clicked.connect(self._browse_file)
        self.folder_button = QPushButton("Folder...")
        self.folder_button.setToolTip("Choose a folder of DICOM files or of NIfTI files")
        self.folder_button.clicked.connect(self._browse_folder)
        path_row = QHBoxLayout()
        path_row.setContentsMargins(0, 0, 0, 0)
        path_row.addWidget(self.path_edit)
        path_row.addWidget(self.file_button)
        path_row.addWidget(self.folder_button)
        self._path_row = QWidget()
        self._path_row.setLayout(path_row)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        layout.addWidget(self._path_row)
        self.combo.currentIndexChanged.connect(self._on_choice)
        self.path_edit.textChanged.connect(self.changed)
        for event in self._layer_events():
            event.connect(self.refresh)
        self.refresh()

    def _layer_events(self) -> tuple:
        events = self._viewer.layers.events
        return (events.inserted, events.removed, events.moved)

    def detach(self) -> None:
        """Stop following the viewer's layers (before the widget is deleted)."""
        for event in self._layer_events():
            event.disconnect(self.refresh)

    def layers(self) -> list[Layer]:
        return [layer for layer in self._viewer.layers if isinstance(layer, self._layer_types)]

    def refresh(self, event=None) -> None:
        """List the current layers, keeping the choice when it still exists."""
        current = self.combo.currentText()
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItems([layer.name for layer in self.layers()] + self._extra)
        index = self.combo.findText(current)
        self.combo.setCurrentIndex(index if index >= 0 else 0)
        self.combo.blockSignals(False)
        self._on_choice()

    def select(self, choice: Layer | str | Path | None) -> None:
        """Choose a layer (or its name), a path, or None ("(none)")."""
        if choice is None:
            self.combo.setCurrentText(NONE_TEXT)
        elif isinstance(choice, Path):
            self.combo.setCurrentText(PATH_TEXT)
            self.path_edit.setText(str(choice))
        else:
            self.combo.setCurrentText(choice.name if isinstance(choice, Layer) else choice)

    def selected(self) -> Layer | Path | None:
        text = self.combo.currentText()
        if text == PATH_TEXT:
            path = self.path_edit.text().strip()
            return Path(path).expanduser() if path else None
        if text in ("", NONE_TEXT):
            return None
        return next((layer for layer in self.layers() if layer.name == text), None)

    def _on_choice(self, index: int = 0) -> None:
        self._path_row.setVisible(self.combo.currentText() == PATH_TEXT)
        self.changed.emit()

    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose an image file", self.path_edit.text(), FILE_FILTER)
        if path:
            self.path_edit.setText(path)

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder of images", self.path_edit.text())
        if folder:
            self.path_edit.setText(folder)
