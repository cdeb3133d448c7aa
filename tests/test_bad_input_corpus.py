"""The bad-input corpus (tests/corpus.py) and every file of pydicom's test data: each read ends in a correct
image or a medsynth error naming the file, never another exception or a printed traceback, and no input
changes."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import data_store
import pydicom
import pytest

from corpus import CASES, Case, fingerprint
from medsynth.errors import InputWarning, MedsynthError
from medsynth.io import read

PYDICOM_FILES = sorted(
    path
    for root in (Path(pydicom.__file__).parent / "data", Path(data_store.__file__).parent / "data")
    for path in root.rglob("*")
    if path.is_file() and path.suffix not in (".py", ".pyc")
)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, tmp_path, capfd) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    path = case.build(folder)
    before = fingerprint(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if case.error is not None:
            with pytest.raises(case.error, match=case.match):
                read(path, keep_rgb=case.keep_rgb)
        else:
            case.check(read(path, keep_rgb=case.keep_rgb))
    ours = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
    if case.error is None:
        assert len(ours) == (1 if case.match else 0), ours
        if case.match:
            assert re.search(case.match, ours[0]), ours[0]
    assert "Traceback" not in capfd.readouterr().err
    assert fingerprint(folder) == before


@pytest.mark.parametrize("path", PYDICOM_FILES, ids=[f"{p.parent.name}/{p.name}" for p in PYDICOM_FILES])
def test_every_pydicom_test_file_reads_or_is_refused_clearly(path: Path, caplog) -> None:
    before = fingerprint_of(path)
    caplog.set_level(logging.DEBUG)
    try:
        images = read(path)
    except MedsynthError as exc:
        assert str(path) in str(exc)
    else:
        assert images and all(image.array.size > 0 for image in images)
    assert not [record for record in caplog.records if record.exc_info], "a traceback was logged"
    assert fingerprint_of(path) == before


def fingerprint_of(path: Path) -> str:
    return fingerprint(path.parent).get(str(path), "")
