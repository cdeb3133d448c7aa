"""Log records of the libraries we read with (pydicom, nibabel), held back while they work for us.

Both log what they repair or fail at: nibabel a header field it fixes on loading, pydicom every
decoder plugin that fails, with its traceback. The reader that called them reports the same in its
own error or `InputWarning`, naming the file and the fix, so their lines would only come before ours.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _Collector(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__()
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def held_back(name: str) -> Iterator[list[str]]:
    """Yield a list that collects the messages of logger `name` and its children; nothing of theirs prints meanwhile."""
    logger = logging.getLogger(name)
    messages: list[str] = []
    saved = logger.handlers, logger.propagate
    logger.handlers, logger.propagate = [_Collector(messages)], False
    try:
        yield messages
    finally:
        logger.handlers, logger.propagate = saved
