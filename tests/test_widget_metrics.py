"""The Metrics dock widget in a real viewer, opened through the manifest, on the CT slice pydicom ships."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from qtpy.QtWidgets import QApplication
from scipy import ndimage

from medsynth.data.samples import load_sample
from medsynth.metrics.evaluate import evaluate
from medsynth.metrics.temporal import temporal_consistency
from medsynth.metrics.resample import Resampled, common_side

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def ct_sequence() -> tuple[np.ndarray, np.ndarray]:
    """A 'real' 2D+t sequence (the CT slice drifting sideways, in HU) and a blurred, noisy 'synthetic' copy."""
    hu = np.asarray(load_sample("ct_slice").array).astype(np.int16)
    real = np.stack([np.roll(hu, 2 * t, axis=1) for t in range(5)])
    rng = np.random.default_rng(1)
    fake = np.stack([ndimage.gaussian_filter(f.astype(np.float32), 1.2) + rng.normal(0, 15, f.shape) for f in real])
    return real, fake.astype(np.float32)


def _open(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Metrics")
    return widget


def _compute(widget, qtbot) -> list:
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.run.worker is None, timeout=60_000)
    return widget.results.table.results


def _table(widget) -> dict[str, list[str]]:
    table = widget.results.table
    return {
        table.item(row, 0).text(): [table.item(row, col).text() for col in range(1, table.columnCount())]
        for row in range(table.rowCount())
    }


def _choose(widget, metrics) -> None:
    for name, box in widget.metric_boxes.items():
        box.setChecked(name in metrics)


@pytest.mark.slow
def test_psnr_ssim_and_temporal_match_the_core(make_napari_viewer, qtbot, ct_sequence, tmp_path):
    real, fake = ct_sequence
    viewer = make_napari_viewer()
    real_layer = viewer.add_image(real, name="cine", metadata={"medsynth": {"axes": "tyx"}})
    fake_layer = viewer.add_image(fake, name="cine [SYNTHETIC]", metadata={"medsynth": {"axes": "tyx"}})
    real_before, fake_before = real_layer.data.copy(), fake_layer.data.copy()
    widget = _open(viewer)
    assert set(widget.metric_boxes) >= {"psnr", "ssim", "swd", "temporal"}
    widget.real.select(real_layer)
    widget.fake.select(fake_layer)
    assert widget.metric_boxes["temporal"].isChecked(), "a time series should suggest the temporal metric"
    _choose(widget, ("psnr", "ssim", "temporal"))

    results = _compute(widget, qtbot)

    expected = evaluate(real.astype(np.float32), fake, metrics=("psnr", "ssim", "temporal"))
    assert [r.name for r in results] == [r.name for r in expected]
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got.values, want.values, rtol=1e-6)
        assert got.n == want.n
    shown = _table(widget)
    psnr = expected[0]
    assert psnr.n == 5 and 20 < psnr.mean < 45
    assert shown["psnr"] == [f"{psnr.mean:.4g}", f"{psnr.sd:.4g}", "5", psnr.note]
    assert float(shown["ssim"][0]) == pytest.approx(expected[1].mean, rel=1e-3)
    assert widget.progress.value() == widget.progress.maximum()

    report = temporal_consistency(real, fake)
    assert widget.intensity_plot.isVisibleTo(widget)
    x, y = widget.intensity_plot.series["diff_real"]
    assert x == [1, 2, 3, 4]
    np.testing.assert_allclose(y, report.real.diff_curve, rtol=1e-5)
    np.testing.assert_allclose(widget.flow_plot.series["flow_fake"][1], report.fake.flow_curve, rtol=1e-5)

    widget.results.table.copy_to_clipboard()
    lines = QApplication.clipboard().text().splitlines()
    assert lines[0].split("\t") == ["metric", "mean", "SD", "n", "notes"]
    cells = lines[1].split("\t")
    assert cells[0] == "psnr" and float(cells[1]) == psnr.mean and float(cells[2]) == psnr.sd

    out = widget.results.table.export_csv(tmp_path / "metrics.csv")
    with out.open(newline="") as f:
        rows = {row["metric"]: row for row in csv.DictReader(f)}
    assert float(rows["ssim"]["mean"]) == expected[1].mean
    assert [float(v) for v in rows["psnr"]["values"].split(";")] == pytest.approx(psnr.values)

    np.testing.assert_array_equal(real_layer.data, real_before)
    np.testing.assert_array_equal(fake_layer.data, fake_before)


def test_mask_layer_adds_ssim_inside_and_outside(make_napari_viewer, qtbot, ct_sequence):
    real, fake = ct_sequence
    viewer = make_napari_viewer()
    viewer.add_image(real[:3], name="real")
    viewer.add_image(fake[:3], name="fake")
    yy, xx = np.mgrid[:128, :128]
    mask = ((yy - 64) ** 2 + (xx - 64) ** 2 < 30**2).astype(np.uint8)
    viewer.add_labels(mask, name="lesion")
    widget = _open(viewer)
    widget.real.select("real")
    widget.fake.select("fake")
    widget.mask.select("lesion")
    widget.slices.setChecked(True)
    _choose(widget, ("ssim",))

    results = _compute(widget, qtbot)

    expected = evaluate(real[:3].astype(np.float32), fake[:3], metrics=("ssim",), mask=mask.astype(bool))
    assert [r.name for r in results] == ["ssim", "ssim_inside", "ssim_outside"]
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got.values, want.values, rtol=1e-6)
    assert results[1].n == 3


def test_a_file_path_is_read_like_the_cli(make_napari_viewer, qtbot):
    """The real image as a layer opened by the plugin's reader, the 'synthetic' one as a file path."""
    path = Path(get_testdata_file("CT_small.dcm"))
    viewer = make_napari_viewer()
    [layer] = viewer.open(path, plugin="napari-medsynth")
    widget = _open(viewer)
    widget.real.select(layer)
    widget.fake.select(path)
    assert widget.fake.path_edit.isVisibleTo(widget)
    _choose(widget, ("ssim",))

    [ssim] = _compute(widget, qtbot)

    assert ssim.n == 1 and ssim.values[0] == pytest.approx(1.0)


def test_bad_input_is_a_notification_not_a_crash(make_napari_viewer, qtbot, monkeypatch, ct_sequence):
    import napari_medsynth.widgets.metrics as metrics_module

    errors = []
    monkeypatch.setattr(metrics_module, "report_error", errors.append)
    viewer = make_napari_viewer()
    viewer.add_image(ct_sequence[0], name="real")
    viewer.add_image(ct_sequence[1][:, :64], name="cropped")
    widget = _open(viewer)
    widget.real.select("real")
    widget.fake.combo.setCurrentText("File or folder...")  # and no path typed
    assert widget.start() is None
    assert "no synthetic images chosen" in str(errors[-1])

    widget.fake.select(Path("missing-folder") / "fake.nii.gz")
    _choose(widget, ("psnr",))
    _compute(widget, qtbot)
    assert "fake.nii.gz" in str(errors[-1]) and widget.results.table.rowCount() == 0
    assert widget.run_button.isEnabled()


def test_a_metric_that_fails_is_its_rows_note_and_the_others_are_kept(make_napari_viewer, qtbot, ct_sequence):
    """128 x 100 px real frames against 64 px 'synthetic' ones: PSNR (paired) and MS-SSIM cannot run, SWD and SF can."""
    real, fake = ct_sequence
    real = real[:, :, 14:114].astype(np.float32)
    small = fake[:, ::2, ::2]
    viewer = make_napari_viewer()
    frames = {"medsynth": {"axes": "tyx"}}  # the frames are the items
    viewer.add_image(real, name="real", metadata=frames)
    viewer.add_image(small, name="small", metadata=frames)
    widget = _open(viewer)
    widget.real.select("real")
    widget.fake.select("small")
    _choose(widget, ("psnr", "ms_ssim", "swd", "sf"))
    assert widget.resample.currentData() == "pad"

    results = {r.name: r for r in _compute(widget, qtbot)}

    assert list(results) == ["psnr", "ms_ssim", "swd", "sf_real", "sf_fake"]
    for name in ("psnr", "ms_ssim"):
        assert np.isnan(results[name].mean) and results[name].note.startswith("not computed: ")
    assert "shape" in results["psnr"].note
    assert _table(widget)["psnr"][0] == "-" and _table(widget)["psnr"][3].startswith("not computed: ")
    # mixed-size SWD: both sets at 64 x 64 (medsynth.metrics.resample), as medsynth evaluate computes it
    assert common_side(real.shape, small.shape) == 64
    padded = np.asarray(Resampled(real, 64, "pad", float(real.min()))[:])
    assert padded.shape == (5, 64, 64) and np.all(padded[:, :, :5] == real.min())  # padded with the background
    [expected] = evaluate(real, small, metrics=("swd",))
    assert results["swd"].mean == pytest.approx(expected.mean) and np.isfinite(expected.mean)
    assert np.isfinite(results["sf_real"].mean) and np.isfinite(results["sf_fake"].mean)

    widget.resample.setCurrentIndex(widget.resample.findData("stretch"))
    _choose(widget, ("swd",))
    [swd] = _compute(widget, qtbot)
    assert swd.mean == pytest.approx(evaluate(real, small, metrics=("swd",), resample="stretch")[0].mean)
    assert swd.mean != pytest.approx(expected.mean)


def test_file_or_folder_picks_a_file_or_a_folder(make_napari_viewer, monkeypatch, tmp_path):
    from qtpy.QtWidgets import QFileDialog

    path = Path(get_testdata_file("CT_small.dcm"))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args, **kwargs: (str(path), ""))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *args, **kwargs: str(tmp_path))
    widget = _open(make_napari_viewer())
    widget.fake.combo.setCurrentText("File or folder...")
    widget.fake.file_button.click()
    assert widget.fake.selected() == path
    widget.fake.folder_button.click()
    assert widget.fake.selected() == tmp_path


def test_closing_the_widget_while_it_computes(make_napari_viewer, qtbot, ct_sequence):
    """napari's close button during a run: the work is told to stop and nothing reaches the dead widget."""
    viewer = make_napari_viewer()
    viewer.add_image(ct_sequence[0], name="real")
    viewer.add_image(ct_sequence[1], name="fake")
    widget = _open(viewer)
    widget.real.select("real")
    widget.fake.select("fake")
    _choose(widget, ("ssim", "swd"))
    worker = widget.start()
    viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    assert worker.control.stop_requested and widget.run.worker is None


def test_missing_inception_weights_are_a_note_in_the_table(make_napari_viewer, qtbot, ct_sequence, tmp_path, monkeypatch):
    from medsynth.weights import ENV_WEIGHTS_DIR

    monkeypatch.delenv(ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.add_image(ct_sequence[0], name="real")
    viewer.add_image(ct_sequence[1], name="fake")
    widget = _open(viewer)
    widget.real.select("real")
    widget.fake.select("fake")
    _choose(widget, ("fid", "psnr"))

    results = _compute(widget, qtbot)

    assert [r.name for r in results] == ["psnr", "fid"]
    assert _table(widget)["fid"][:3] == ["-", "-", "0"]
    assert _table(widget)["fid"][3].startswith("no Inception weights: FID skipped")


def test_a_fusion_source_b_gives_the_fusion_figures_of_the_core(make_napari_viewer, qtbot):
    from medsynth.metrics.evaluate import FUSION_METRICS, evaluate_fusion

    t1, gm = (np.asarray(load_sample(name).array[80:100:5], np.float32) for name in ("mni152", "mni152_gm"))
    fused = (t1 + gm) / 2  # both span 0..255
    viewer = make_napari_viewer()
    for name, data in (("t1", t1), ("gm", gm), ("fused", fused)):
        viewer.add_image(data, name=name)
    widget = _open(viewer)
    widget.real.select("t1")
    widget.fake.select("fused")
    widget.source_b.select("gm")
    widget.slices.setChecked(True)

    results = _compute(widget, qtbot)

    assert [r.name for r in results] == list(FUSION_METRICS)
    for got, want in zip(results, evaluate_fusion(fused, t1, gm)):
        np.testing.assert_allclose(got.values, want.values, rtol=1e-6)
    assert set(_table(widget)) == set(FUSION_METRICS)
    widget.reset_defaults()
    assert widget.source_b.selected() is None
