"""The layout every MedSynth dock shares: a scroll area, basic settings first, the rest collapsed.

A dock's minimum height is its content's unless the content scrolls: without a scroll area the Train
dock alone asked for 1,337 px and all docks together for a window over 4,000 px tall. Inside a scroll
area a dock fits any screen, and the advanced group stays folded until the user wants it.
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QLabel, QPushButton, QScrollArea, QVBoxLayout, QWidget
from superqt import QCollapsible

MAX_MIN_HEIGHT_PX = 900
"""What a dock may ask for at least: it fits a 1080 px screen with napari's title bar and menus."""


def scrolled_content(dock: QWidget) -> QVBoxLayout:
    """Give `dock` a frameless vertical scroll area; return the layout of the content inside it.

    The content takes the dock's width (no horizontal scrolling): long texts wrap (`wrap`).
    """
    content = QWidget()
    layout = QVBoxLayout(content)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setWidget(content)
    outer = QVBoxLayout(dock)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    return layout


def advanced_group(title: str = "Advanced", *widgets: QWidget) -> QCollapsible:
    """A collapsed group holding `widgets`; unfolding it needs no animation (no repaint per frame)."""
    group = QCollapsible(title)
    group.setDuration(0)
    for widget in widgets:
        group.addWidget(widget)
    return group


def reset_button(reset: Callable[[], None], what: str = "settings") -> QPushButton:
    """A "Reset defaults" button that calls `reset`."""
    button = QPushButton("Reset defaults")
    button.setToolTip(f"Put every {what} of this dock back to its default")
    button.clicked.connect(reset)
    return button


def wrap(*labels: QLabel) -> None:
    """Let `labels` (Qt labels, or the ``native`` of magicgui ones) wrap instead of widening the dock."""
    for label in labels:
        label.setWordWrap(True)
