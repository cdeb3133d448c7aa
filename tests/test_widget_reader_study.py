"""The Reader study dock widget in a real viewer: blinded display, key presses, durable answers, resume."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from qtpy.QtCore import Qt
from scipy import ndimage
from sklearn.metrics import cohen_kappa_score

from medsynth.data.samples import load_sample
from medsynth.metrics.reader_session import REAL, SYNTHETIC, display_image, read_answers
from medsynth.metrics.reader_study import reader_study
from napari_medsynth.widgets.reader_study import DISPLAY_LAYER, SUGGESTED_MIN_FOREGROUND, offered_options

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def ct_sets() -> tuple[np.ndarray, np.ndarray]:
    """4 'real' CT slices in HU (the pydicom slice, shifted) and 4 blurred, noisy 'synthetic' ones."""
    hu = np.asarray(load_sample("ct_slice").array).astype(np.int16)
    real = np.stack([np.roll(hu, 9 * k, axis=0) for k in range(4)])
    rng = np.random.default_rng(2)
    fake = np.stack([ndimage.gaussian_filter(r.astype(np.float32), 1.5) + rng.normal(0, 25, r.shape) for r in real])
    return real, fake.astype(np.float32)


def _open(viewer, rater: str, csv_path):
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Reader study")
    widget.real.select("real CT")
    widget.fake.select("GAN CT [SYNTHETIC]")
    widget.rater.setText(rater)
    widget.csv_path.setText(str(csv_path))
    return widget


def _press(viewer, qtbot, answer: str) -> None:
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key_R if answer == REAL else Qt.Key_S)


def _lines(path) -> int:
    return len(path.read_text().splitlines())


def test_a_rater_answers_with_keys_resumes_and_gets_statistics(make_napari_viewer, qtbot, ct_sets, tmp_path):
    real, fake = ct_sets
    viewer = make_napari_viewer()
    real_layer = viewer.add_image(real, name="real CT")
    fake_layer = viewer.add_image(fake, name="GAN CT [SYNTHETIC]")
    csv_path = tmp_path / "ann.csv"
    widget = _open(viewer, "ann", csv_path)
    session = widget.start()
    assert session is not None and session.n_total == 8

    shown = viewer.layers[DISPLAY_LAYER]
    assert [layer.visible for layer in (real_layer, fake_layer)] == [False, False]
    sliders = viewer.window._qt_viewer.dims
    assert sliders.isHidden(), "the studied stack's slider position would tell which item is shown"
    assert shown.metadata == {} and shown.dtype == np.float32 and tuple(shown.contrast_limits) == (0, 1)
    np.testing.assert_array_equal(shown.data, display_image(session.current.image()))
    assert widget.real_button.isEnabled() and not widget.start_button.isEnabled()

    def rule(item) -> str:  # fooled by every second synthetic image, never by a real one
        return REAL if item.truth == REAL or item.index % 2 else SYNTHETIC

    for k in range(3):
        _press(viewer, qtbot, rule(session.current))
        assert _lines(csv_path) == k + 2, "each answer is in the CSV as soon as the key is pressed"
        assert widget.progress.value() == k + 1
    answered = {a.item_id for a in read_answers(csv_path)}

    viewer.window.remove_dock_widget(widget)  # napari's close button does this
    assert DISPLAY_LAYER not in viewer.layers
    assert real_layer.visible and fake_layer.visible and not sliders.isHidden()
    _press(viewer, qtbot, REAL)
    assert _lines(csv_path) == 4, "the R key no longer answers once the widget is closed"

    widget = _open(viewer, "ann", csv_path)
    session = widget.start()
    assert session.n_answered == 3 and session.current.item_id not in answered
    assert widget.progress.value() == 3 and widget.progress.maximum() == 8
    while not session.done:
        _press(viewer, qtbot, rule(session.current))
    assert DISPLAY_LAYER not in viewer.layers and not widget.real_button.isEnabled()

    answers = read_answers(csv_path)
    assert len(answers) == 8 and len({a.item_id for a in answers}) == 8
    truth_answer = [(a.truth, a.answer) for a in answers]
    counts = [truth_answer.count(pair) for pair in ((REAL, REAL), (REAL, SYNTHETIC), (SYNTHETIC, REAL), (SYNTHETIC, SYNTHETIC))]
    assert counts == [4, 0, 2, 2]
    expected = reader_study(*counts)
    table = {r.name: r for r in widget.results.table.results}
    for key in ("sensitivity", "specificity", "accuracy", "kappa", "mcnemar_p", "binomial_p"):
        assert table[f"ann: {key}"].mean == pytest.approx(expected[key])
        assert table[f"ann: {key}"].n == 8
    assert table["ann: accuracy"].mean == 0.75

    np.testing.assert_array_equal(real_layer.data, real)
    np.testing.assert_array_equal(fake_layer.data, fake)


def test_two_raters_agreement(make_napari_viewer, qtbot, ct_sets, tmp_path):
    real, fake = ct_sets
    viewer = make_napari_viewer()
    viewer.add_image(real, name="real CT")
    viewer.add_image(fake, name="GAN CT [SYNTHETIC]")
    calls = {}
    for rater, rule in (("ann", lambda item: item.truth), ("bob", lambda item: REAL if item.index < 2 else SYNTHETIC)):
        widget = _open(viewer, rater, tmp_path / f"{rater}.csv")
        session = widget.start()
        while not session.done:
            item = session.current
            calls.setdefault(rater, {})[item.item_id] = rule(item)
            (widget.real_button if rule(item) == REAL else widget.synthetic_button).click()
        viewer.window.remove_dock_widget(widget)

    widget = _open(viewer, "ann", tmp_path / "ann.csv")
    widget.compare_raters([tmp_path / "ann.csv", tmp_path / "bob.csv"])
    table = {r.name: r for r in widget.results.table.results}
    ids = sorted(calls["ann"])
    expected = cohen_kappa_score([calls["ann"][i] for i in ids], [calls["bob"][i] for i in ids])
    assert table["kappa ann vs bob"].mean == pytest.approx(expected)
    assert table["kappa ann vs bob"].n == 8
    assert table["ann: accuracy"].mean == 1.0 and table["bob: accuracy"].mean == 0.5


def test_bad_setup_is_a_notification(make_napari_viewer, monkeypatch, ct_sets, tmp_path):
    import napari_medsynth.widgets.reader_study as module

    errors, warnings = [], []
    monkeypatch.setattr(module, "report_error", errors.append)
    monkeypatch.setattr(module, "show_warning", warnings.append)
    viewer = make_napari_viewer()
    viewer.add_image(ct_sets[0], name="real CT")
    viewer.add_image(ct_sets[1], name="GAN CT [SYNTHETIC]")
    widget = _open(viewer, "", tmp_path / "x.csv")
    assert widget.start() is None and "rater name is empty" in str(errors[-1])
    assert DISPLAY_LAYER not in viewer.layers
    widget.rater.setText("ann")
    widget.fake.select(viewer.add_image(ct_sets[1][:, :64], name="cropped"))
    assert widget.start() is not None
    assert "tell them apart by size" in warnings[-1] and len(errors) == 1


def test_real_images_from_a_file(make_napari_viewer, ct_sets, tmp_path):
    """A DICOM file as the real source (read by medsynth.io.read), a layer as the synthetic one."""
    from pathlib import Path

    viewer = make_napari_viewer()
    viewer.add_image(ct_sets[0], name="real CT")
    viewer.add_image(ct_sets[1], name="GAN CT [SYNTHETIC]")
    widget = _open(viewer, "ann", tmp_path / "ann.csv")
    widget.real.select(Path(get_testdata_file("CT_small.dcm")))
    session = widget.start()
    assert session.n_total == 5
    sources = {item.truth: item.source for item in session.order}
    assert sources[REAL].endswith("CT_small.dcm") and sources[SYNTHETIC].startswith("GAN CT")
    real_item = next(item for item in session.order if item.truth == REAL)
    np.testing.assert_allclose(real_item.image(), ct_sets[0][0])
    widget.stop()


@pytest.mark.skipif(
    not {"balance", "min_foreground"} <= offered_options(),
    reason="this core's build_items has no balance or min_foreground yet (they come with the rel-cli branch)",
)
def test_balanced_trials_and_near_empty_slices_left_out(make_napari_viewer, ct_sets, tmp_path):
    """The MNI152 template (189 axial slices, many of them air) as real images against 4 synthetic CT slices."""
    viewer = make_napari_viewer()
    viewer.add_image(np.asarray(load_sample("mni152").array), name="real CT")
    viewer.add_image(ct_sets[1], name="GAN CT [SYNTHETIC]")
    widget = _open(viewer, "ann", tmp_path / "ann.csv")
    counts = {}
    for balance, min_foreground in ((False, 0.0), (False, SUGGESTED_MIN_FOREGROUND), (True, SUGGESTED_MIN_FOREGROUND)):
        widget.balance.setChecked(balance)
        widget.min_foreground.setValue(min_foreground)
        widget.csv_path.setText(str(tmp_path / f"{balance}-{min_foreground}.csv"))
        counts[balance, min_foreground] = widget.start().n_total
        widget.stop()
    assert counts[False, 0.0] == 189 + 4
    assert 4 < counts[False, SUGGESTED_MIN_FOREGROUND] - 4 < 189  # the air slices are left out
    assert counts[True, SUGGESTED_MIN_FOREGROUND] == 2 * 4
