"""Progress on stderr: a one-line bar redrawn in place on a terminal, log lines in files and batch jobs."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("medsynth")

BAR_WIDTH = 24


class ProgressLine:
    """Shows ``done`` of ``total`` with a text: a bar on a terminal, else a log line.

    Off a terminal, `log_fraction` (e.g. 0.1) logs only when another tenth is done, so that a long
    job does not fill its log file; None logs every update.
    """

    def __init__(self, stream=None, log_fraction: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log_fraction = log_fraction
        self._logged = -1

    def show(self, done: int, total: int, text: str) -> None:
        if self.tty:
            filled = int(BAR_WIDTH * done / max(1, total))
            self.stream.write(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}\x1b[K")
            self.stream.flush()
            return
        if self.log_fraction is not None:
            mark = int(done / max(1, total) / self.log_fraction)
            if mark == self._logged and done < total:
                return
            self._logged = mark
        log.info(text)

    def finish(self) -> None:
        """End the bar's line (on a terminal; log lines end by themselves)."""
        if self.tty:
            self.stream.write("\n")

    def line(self, text: str) -> None:
        """A line of its own, below the bar."""
        if self.tty:
            self.stream.write("\n")
        log.info(text)
