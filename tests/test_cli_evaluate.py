"""`medsynth.metrics.evaluate` and `medsynth evaluate` on a real fMRI series, checked against scikit-image."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medsynth.cli import main
from medsynth.errors import InputError
from medsynth.io import SyntheticProvenance, read, write_nifti
from medsynth.metrics import available_metrics, evaluate, swd, to_csv, to_json


@pytest.fixture(scope="module")
def example4d_path():
    from nibabel.testing import data_path

    return data_path / "example4d.nii.gz"


@pytest.fixture(scope="module")
def fmri(example4d_path):
    """The real 4D fMRI series nibabel ships: two volumes (2, 24, 96, 128), values 0..1162."""
    image = read(example4d_path)[0]
    assert image.axes == "tzyx"
    return image


@pytest.fixture(scope="module")
def slices(fmri):
    """Real: the 24 slices of volume 0; fake: those of volume 1 (the same anatomy, another time point)."""
    arr = np.asarray(fmri.array, dtype=np.float64)
    return arr[0], arr[1]


def _skimage_ssim(a, b, span):
    return structural_similarity(a, b, data_range=span, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


@pytest.mark.slow
def test_evaluate_matches_scikit_image_and_swd(slices):
    real, fake = slices
    calls = []
    results = evaluate(real, fake, progress=lambda done, total, label: calls.append((done, total, label)))
    by_name = {r.name: r for r in results}
    assert list(by_name) == ["psnr", "ssim", "swd"]
    span = real.max() - real.min()  # the REAL set's global range
    psnr_ref = [peak_signal_noise_ratio(r, f, data_range=span) for r, f in zip(real, fake)]
    ssim_ref = [_skimage_ssim(r, f, span) for r, f in zip(real, fake)]
    np.testing.assert_allclose(by_name["psnr"].values, psnr_ref, rtol=1e-6)
    np.testing.assert_allclose(by_name["ssim"].values, ssim_ref, atol=1e-6)
    assert by_name["psnr"].mean == pytest.approx(np.mean(psnr_ref)) and by_name["psnr"].n == 24
    assert by_name["ssim"].sd == pytest.approx(np.std(ssim_ref, ddof=1), rel=1e-4)
    levels = swd(real, fake)
    assert by_name["swd"].mean == pytest.approx(levels["mean"])
    assert by_name["swd"].details["levels"] == pytest.approx({k: v for k, v in levels.items() if k != "mean"})
    assert calls == [(0, 3, "psnr"), (1, 3, "ssim"), (2, 3, "swd"), (3, 3, "done")]


def test_data_range_comes_from_the_real_set_not_from_one_image(slices):
    real, fake = slices
    default = evaluate(real, fake, metrics=["psnr"])[0]
    explicit = evaluate(real, fake, metrics=["psnr"], data_range=float(real.max() - real.min()))[0]
    assert default.values == pytest.approx(explicit.values)
    # A brighter fake set does not change the range: PSNR must drop, not be re-normalised away.
    brighter = evaluate(real, fake * 1.5, metrics=["psnr"])[0]
    assert brighter.mean < default.mean - 3
    per_image = [
        peak_signal_noise_ratio(r, f, data_range=r.max() - r.min()) for r, f in zip(real, fake) if r.max() > r.min()
    ]
    assert default.mean != pytest.approx(np.mean(per_image), abs=0.1)


def test_mask_adds_inside_and_outside_ssim_that_recombine_to_the_whole(slices):
    real, fake = slices
    mask = real[12] > np.percentile(real[12], 60)  # one slice's brain mask for all items
    results = {r.name: r for r in evaluate(real, fake, metrics=["ssim"], mask=mask)}
    assert list(results) == ["ssim", "ssim_inside", "ssim_outside"]
    inner = mask[5:-5, 5:-5]  # SSIM is averaged where the 11x11 window fits
    n_in, n_out = inner.sum(), (~inner).sum()
    whole = (np.array(results["ssim_inside"].values) * n_in + np.array(results["ssim_outside"].values) * n_out) / (
        n_in + n_out
    )
    np.testing.assert_allclose(whole, results["ssim"].values, rtol=1e-10)


@pytest.mark.slow
def test_missing_inception_weights_skip_fid_and_kid_with_a_note(slices, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSYNTH_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    real, fake = slices
    results = evaluate(real[:4], fake[:4], metrics=["fid", "kid"])
    for r in results:
        assert math.isnan(r.mean) and r.n == 0
        expected = (
            f"no Inception weights: {r.name.upper()} skipped (put pt_inception-2015-12-05-6726825d.pth in {tmp_path})"
        )
        assert r.note == expected
        assert "does not download" in r.details["error"]


def test_sharpness_and_temporal_rows(fmri):
    frames = np.asarray(fmri.array, dtype=np.float64)[:, 10:14]  # 2 frames of (4, 96, 128) volumes
    results = {r.name: r for r in evaluate(frames, frames[::-1].copy(), metrics=["sf", "temporal"])}
    assert list(results) == [
        "sf_real",
        "sf_fake",
        "temporal_diff_w1",
        "temporal_flow_w1",
        "warp_error_real",
        "warp_error_fake",
    ]
    assert results["sf_real"].n == 2 and results["sf_real"].mean > 0
    assert results["warp_error_real"].n == 1
    assert results["temporal_diff_w1"].details["curves"]["diff_real"] == pytest.approx(
        results["temporal_diff_w1"].details["curves"]["diff_fake"]
    )


def test_paired_metrics_need_equal_counts_distribution_metrics_do_not(slices):
    real, fake = slices
    psnr_row, swd_row = evaluate(real, fake[:10], metrics=["psnr", "swd"])
    assert "24 real and 10 fake" in psnr_row.error and psnr_row.n == 0 and math.isnan(psnr_row.mean)
    assert not swd_row.error and swd_row.mean == pytest.approx(evaluate(real, fake[:10], metrics=["swd"])[0].mean)


@pytest.mark.parametrize(
    ("metrics", "fake", "failing", "reason"),
    [
        (["ms_ssim", "psnr"], None, "ms_ssim", "at least 176"),  # 96 x 128 px slices
        (["ssim_inside", "ssim"], None, "ssim_inside", "needs a mask"),
        (["fid", "swd"], None, "fid", "no Inception weights"),
        (["kid", "swd"], "one", "kid", "fake has 1 image(s); this distribution metric needs at least 2"),
        (["psnr", "swd"], "small", "psnr", "real items have shape (96, 128) and fake items (64, 64)"),
    ],
)
def test_a_metric_that_cannot_run_gets_its_reason_in_its_row_and_the_others_are_kept(
    slices, tmp_path, monkeypatch, metrics, fake, failing, reason
):
    monkeypatch.setenv("MEDSYNTH_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    real, same = slices
    fakes = {None: same, "one": same[:1], "small": same[:, 16:80, 32:96]}
    rows = {r.name: r for r in evaluate(real, fakes[fake], metrics=metrics)}
    assert list(rows) == metrics
    assert reason in rows[failing].error and math.isnan(rows[failing].mean) and rows[failing].n == 0
    kept = [rows[name] for name in metrics if name != failing]
    assert all(not r.error and np.isfinite(r.mean) for r in kept)


def test_distribution_metrics_resample_sets_of_different_sizes_to_a_stated_common_side(slices):
    real, fake = slices  # 96 x 128 px real slices
    from medsynth.metrics.resample import resample_images

    small = resample_images(fake, 64, "pad", fill=float(real.min()))  # as a 64 px model would see them
    (row,) = evaluate(real, small, metrics=["swd"])
    assert row.details["resampled_side"] == 64
    assert "real 96x128 and fake 64x64 resampled to 64x64 (padded to squares with the background" in row.note
    same_size = swd(resample_images(real, 64, "pad", fill=float(real.min())), small)["mean"]
    assert row.mean == pytest.approx(same_size)
    # The same anatomy at another size scores far better than noise of that size.
    noise = np.random.default_rng(0).uniform(real.min(), real.max(), small.shape)
    assert row.mean < evaluate(real, noise, metrics=["swd"])[0].mean / 2
    stretched = evaluate(real, small, metrics=["swd"], resample="stretch")[0]
    assert "stretched" in stretched.note and stretched.mean != row.mean
    with pytest.raises(InputError, match="resample method 'zoom' is not one of pad, stretch"):
        evaluate(real, small, metrics=["swd"], resample="zoom")


@pytest.mark.parametrize(
    "fake, kwargs, message",
    [
        (None, {"metrics": ["psnr", "bogus"]}, "unknown metric"),
        (np.full((24, 96, 128), np.nan), {}, "NaN"),
        (np.zeros((24, 96)), {}, "give a batch of images"),
    ],
)
def test_evaluate_rejects_bad_input(slices, fake, kwargs, message):
    real, same = slices
    with pytest.raises(InputError, match=message):
        evaluate(real, same if fake is None else fake, **kwargs)


def test_constant_real_set_needs_an_explicit_range(slices):
    with pytest.raises(InputError, match="data range"):
        evaluate(np.zeros((3, 32, 32)), slices[1][:3, :32, :32], metrics=["psnr"])
    (r,) = evaluate(np.zeros((3, 32, 32)), np.ones((3, 32, 32)), metrics=["psnr"], data_range=(0.0, 4.0))
    assert r.mean == pytest.approx(10 * math.log10(16))


def test_results_are_written_as_json_and_csv(slices, tmp_path):
    real = slices[0]
    results = evaluate(real, real.copy(), metrics=["psnr", "swd"])  # identical: PSNR is inf
    assert math.isnan(results[0].mean) and "24 of 24 values not finite" in results[0].note
    json_path, csv_path = to_json(results, tmp_path / "r.json"), to_csv(results, tmp_path / "r.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]  # no temporary files left
    doc = json.loads(json_path.read_text())
    assert set(doc["versions"]) >= {"napari-medsynth", "torch", "torchmetrics", "scikit-image"}
    assert doc["definitions"] == available_metrics()
    assert doc["results"][0]["name"] == "psnr" and doc["results"][0]["mean"] is None
    assert doc["results"][1]["details"]["levels"] == pytest.approx(results[1].details["levels"])
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["metric"] for r in rows] == ["psnr", "swd"]
    assert float(rows[1]["mean"]) == pytest.approx(results[1].mean)
    assert len(rows[0]["values"].split(";")) == 24
    with pytest.raises(InputError, match="does not exist"):
        to_json(results, tmp_path / "missing" / "r.json")


# The command line ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_file(fmri, tmp_path_factory):
    """A synthetic NIfTI: the real series with noise, written by medsynth and labelled synthetic."""
    noisy = np.asarray(fmri.array, np.float32) + np.random.default_rng(0).normal(0, 20, fmri.array.shape).astype(
        np.float32
    )
    image = fmri.with_array(noisy, synthetic=SyntheticProvenance("test-noise", "0", seed=0))
    return write_nifti(image, tmp_path_factory.mktemp("fake") / "fake.nii.gz")


def test_cli_evaluates_per_volume_and_per_slice(example4d_path, fake_file, fmri, tmp_path, capsys):
    out_json = tmp_path / "out.json"
    args = ["evaluate", "--real", str(example4d_path), "--fake", str(fake_file), "--metrics", "psnr,ssim"]
    assert main([*args, "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["metric", "mean", "SD", "n", "note"]
    doc = json.loads(out_json.read_text())
    real = np.asarray(fmri.array, np.float64)
    fake = np.asarray(read(fake_file)[0].array, np.float64)
    span = real.max() - real.min()
    psnr = doc["results"][0]
    assert psnr["n"] == 2  # two 3D volumes, evaluated per volume
    np.testing.assert_allclose(
        psnr["values"], [peak_signal_noise_ratio(r, f, data_range=span) for r, f in zip(real, fake)], rtol=1e-6
    )
    assert f"{psnr['mean']:.6g}" in table

    out_csv = tmp_path / "out.csv"
    assert main([*args, "--slices", "--csv", str(out_csv), "--data-range", "0", "1200"]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["n"] for r in rows] == ["48", "48"]
    clipped = np.clip(real, 0, 1200).reshape(-1, 96, 128), np.clip(fake, 0, 1200).reshape(-1, 96, 128)  # MIN MAX clips
    expected = [_skimage_ssim(r, f, 1200.0) for r, f in zip(*clipped)]
    np.testing.assert_allclose([float(v) for v in rows[1]["values"].split(";")], expected, atol=1e-6)


def test_cli_mask_and_metric_list(example4d_path, fake_file, fmri, tmp_path, capsys):
    mean = np.asarray(fmri.array, np.float32).mean(axis=0)
    label = fmri.with_array((mean > np.percentile(mean, 70)).astype(np.uint8), axes="zyx", is_label=True)
    mask_path = write_nifti(label, tmp_path / "brain_mask.nii.gz")
    code = main(
        [
            "evaluate",
            "--real",
            str(example4d_path),
            "--fake",
            str(fake_file),
            "--metrics",
            "ssim",
            "--mask",
            str(mask_path),
        ]
    )
    assert code == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == ["ssim", "ssim_inside", "ssim_outside"]
    assert main(["evaluate", "--metrics", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in available_metrics())


def test_cli_bad_input_exits_2(example4d_path, fake_file, tmp_path, capsys):
    from nibabel.testing import data_path

    real = str(example4d_path)
    cases = [
        ["--real", str(tmp_path / "missing.nii.gz"), "--fake", str(fake_file)],
        ["--real", real, "--fake", str(fake_file), "--metrics", "psnr,nonsense"],
        ["--real", real, "--fake", str(data_path / "anatomical.nii"), "--metrics", "psnr,ssim"],  # other shape
        ["--real", real, real, "--fake", str(fake_file), "--metrics", "psnr"],  # 4 real volumes vs 2 fake
    ]
    for extra in cases:
        assert main(["evaluate", *extra]) == 2
        assert "medsynth: error:" in capsys.readouterr().err
    assert main(["evaluate", "--real", real]) == 2
    assert "--fake" in capsys.readouterr().err
    assert main(["evaluate", "--real", real, "--fake", str(fake_file), "--slices", "--data-range", "5"]) == 2
