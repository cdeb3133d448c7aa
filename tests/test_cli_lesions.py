"""`medsynth lesions` end to end on the real CT slice: images, masks and manifest, lesions outside the danger zone."""

from __future__ import annotations

import argparse
import csv
import json

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medsynth.cli import lesions as lesions_cli
from medsynth.cli import main
from medsynth.data.samples import load_sample, sample_path
from medsynth.errors import InputError
from medsynth.io import read_image, write_nifti
from medsynth.lesions.crop import lesion_crop
from medsynth.lesions.danger import bootstrap_danger
from medsynth.lesions.learned import HeatmapModel, predict_danger
from medsynth.lesions.location import top_candidates
from medsynth.lesions.singan_training import SinGANRunOptions, SinGANSettings, load_singan, train_to_end
from medsynth.training.config import TrainConfig
from medsynth.training.trainer import train

SMALL_UNET = {"width": 8, "depth": 2, "resolution": 64, "batch_size": 4, "lr": 3e-3}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medsynth")
    lesions_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _main(argv: list[str]) -> int:
    """`medsynth ARGV` through this subcommand's parser, with the exit code cli.main gives bad input."""
    args = _parse(argv)
    try:
        return args.func(args)
    except InputError:
        return 2


@pytest.fixture(scope="module")
def lesion_model(tmp_path_factory):
    """A tiny SinGAN trained on a real soft-tissue crop of the CT slice (HU)."""
    plane = np.asarray(load_sample("ct_slice").array, dtype=np.float32)
    values, mask = lesion_crop(plane, (96, 40, 112, 56))
    path = tmp_path_factory.mktemp("model") / "lesion.safetensors"
    settings = SinGANSettings(min_size=17, iterations=15, width=8, layers=3)
    train_to_end(values, mask, settings, run=SinGANRunOptions(log_every=100), checkpoint=path)
    return path


@pytest.mark.slow
def test_lesions_cli_writes_synthetic_images_masks_and_manifest(lesion_model, tmp_path):
    ct = sample_path("ct_slice")
    out = tmp_path / "out"
    argv = ["lesions", "--background", str(ct), "--lesion-model", str(lesion_model), "--danger", "auto",
            "--per-image", "3", "--num", "2", "--out", str(out), "--seed", "5", "--min-spacing", "12"]
    assert _main(argv) == 0

    background = np.asarray(load_sample("ct_slice").array, dtype=np.float32)
    permissible = bootstrap_danger(load_sample("ct_slice")).astype(bool)
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(rows) == 6 and {r["image"] for r in rows} == {"synthetic_0000.nii.gz", "synthetic_0001.nii.gz"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["models"]["lesion_model"] == str(lesion_model)
    for index in range(2):
        image = read_image(out / f"synthetic_{index:04d}.nii.gz")
        labels = read_image(out / f"synthetic_{index:04d}_mask.nii.gz", as_label=True)
        assert image.synthetic is not None and image.synthetic.model == "singan" and image.synthetic.seed == 5
        assert "SYNTHETIC" in str(nib.load(out / f"synthetic_{index:04d}.nii.gz").header["descrip"])
        assert image.array.shape == background.shape and labels.is_label
        assert set(np.unique(labels.array)) == {0, 1, 2, 3}
        assert not (np.asarray(labels.array) > 0)[~permissible].any()  # no lesion pixel in the danger zone
        untouched = np.asarray(labels.array) == 0
        changed = ~np.isclose(np.asarray(image.array), background, atol=0.5)
        assert changed.any() and changed[untouched].mean() < 0.05  # only lesions and their seams changed
        for row in (r for r in rows if r["image_index"] == str(index)):
            # A detector's box and centroid: those of the label's pixels; the generated patch is recorded apart.
            pixels = np.argwhere(np.asarray(labels.array) == int(row["label_id"]))
            assert len(pixels) == int(row["pixels"])
            box = [int(row[k]) for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")]
            assert box == [*pixels.min(axis=0), *(pixels.max(axis=0) + 1)]
            np.testing.assert_allclose([float(row["centroid_y"]), float(row["centroid_x"])], pixels.mean(axis=0), atol=1e-3)
            assert int(row["patch_height"]) >= box[2] - box[0] and int(row["patch_width"]) >= box[3] - box[1]

    # Every option is recorded, and the manifest's command alone makes the same images again.
    options = manifest["options"]
    assert {"size", "variability", "min_spacing", "candidates", "slice", "blend", "danger", "num", "per_image"} <= set(options)
    assert options["min_spacing"] == 12 and options["size"] == [0.8, 1.2] and options["danger"] == ["auto"]
    command = manifest["command"]
    assert command[:2] == ["medsynth", "lesions"]
    again = tmp_path / "again"
    command[command.index("--out") + 1] = str(again)
    assert _main(command[1:]) == 0
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in out.iterdir())
    for name in ("synthetic_0000.nii.gz", "synthetic_0001.nii.gz", "synthetic_0001_mask.nii.gz"):
        np.testing.assert_array_equal(read_image(again / name).array, read_image(out / name).array)
    assert json.loads((again / "manifest.json").read_text())["lesions"] == manifest["lesions"]


@pytest.mark.slow
def test_lesions_cli_with_a_painted_danger_mask_and_location_labels(lesion_model, tmp_path):
    ct = sample_path("ct_slice")
    image = load_sample("ct_slice")
    painted = np.zeros(image.array.shape, dtype=np.uint8)
    painted[70:120, 10:60] = 1  # only this block is permissible
    danger_path = write_nifti(image.with_array(painted, is_label=True, name="danger"), tmp_path / "danger_mask.nii.gz")
    history = np.zeros(image.array.shape, dtype=np.uint8)
    history[90:96, 30:36] = 1
    labels_path = write_nifti(image.with_array(history, is_label=True, name="history"), tmp_path / "history_label.nii.gz")
    out = tmp_path / "out"
    argv = ["lesions", "--background", str(ct), "--lesion-model", str(lesion_model), "--danger", str(danger_path),
            "--location-labels", str(labels_path), "--per-image", "1", "--out", str(out), "--candidates", "200"]
    assert _main(argv) == 0
    labels = np.asarray(read_image(out / "synthetic_0000_mask.nii.gz", as_label=True).array)
    assert labels.any() and not labels[painted == 0].any()
    assert (out / "location_prior.json").is_file()
    row = next(csv.DictReader((out / "manifest.csv").open()))
    assert abs(int(row["centre_y"]) - 93) < 20 and abs(int(row["centre_x"]) - 33) < 20  # near the past lesion

    # A run that fails on its second image ("no place left") leaves no output: not a new folder,
    # nothing added to an existing one, no temporary folder.
    nowhere = write_nifti(image.with_array(np.zeros_like(painted), is_label=True, name="none"), tmp_path / "none_mask.nii.gz")
    two = ["lesions", "--background", str(ct), str(ct), "--lesion-model", str(lesion_model), "--danger", str(danger_path), str(nowhere)]
    with pytest.raises(InputError, match="no permissible place is left for lesion 1"):
        lesions_cli.run(_parse([*two, "--out", str(tmp_path / "x")]))
    assert not (tmp_path / "x").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    assert _main([*two, "--out", str(existing)]) == 2
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert _main([*two[:3], "--lesion-model", str(lesion_model), "--danger", str(danger_path), "--out", str(existing)]) == 0
    assert {"notes.txt", "synthetic_0000.nii.gz", "manifest.json"} <= {p.name for p in existing.iterdir()}


@pytest.fixture(scope="module")
def learned_models(tmp_path_factory):
    """A danger-unet trained on the CT slice and its bootstrap mask, and a lesion-heatmap trained on two past lesions."""
    ct = load_sample("ct_slice")
    history = np.zeros(ct.array.shape, dtype=np.uint8)
    history[88:98, 28:38] = 1
    history[60:70, 80:90] = 2
    checkpoints = []
    for recipe, target, steps in [("danger-unet", bootstrap_danger(ct), 40), ("lesion-heatmap", history, 30)]:
        config = TrainConfig(recipe=recipe, out_dir=tmp_path_factory.mktemp(recipe), steps=steps, sample_every=0,
                             device="cpu", settings=SMALL_UNET, normalization="window", window_center=40, window_width=400)  # fmt: skip
        checkpoints.append(list(train(config, [(ct, target)]))[-1].checkpoint)
    return tuple(checkpoints)


@pytest.mark.slow
def test_lesions_cli_with_danger_unet_and_lesion_heatmap_checkpoints(lesion_model, learned_models, tmp_path, capsys):
    danger_model, heatmap_model = learned_models
    ct_path = sample_path("ct_slice")
    ct = read_image(ct_path)
    out = tmp_path / "out"
    base = ["lesions", "--background", str(ct_path), "--lesion-model", str(lesion_model), "--per-image", "2", "--seed", "1"]
    assert main([*base, "--danger", str(danger_model), "--location-model", str(heatmap_model), "--candidates", "60", "--out", str(out)]) == 0

    # Lesions lie where the checkpoint predicts permissible tissue, at peaks of the predicted heatmap.
    permissible = predict_danger(danger_model, ct).astype(bool)
    assert 0.2 < permissible.mean() < 0.9
    labels = np.asarray(read_image(out / "synthetic_0000_mask.nii.gz", as_label=True).array)
    assert set(np.unique(labels)) == {0, 1, 2} and not labels[~permissible].any()
    peaks, _ = top_candidates(HeatmapModel.load(heatmap_model).plane_heatmap(np.asarray(ct.array)), 60)
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(rows) == 2
    for row in rows:
        assert (int(row["centre_y"]), int(row["centre_x"])) in {tuple(p) for p in peaks.tolist()}
        assert row["location_model"] == str(heatmap_model) and row["danger"] == str(danger_model)

    # Each option refuses the other kind of file, and a danger "mask" that is an image.
    def refused(*argv: str) -> str:
        assert main([*base, *argv, "--out", str(tmp_path / "refused")]) == 2
        return capsys.readouterr().err

    assert "needs a 'lesion-heatmap' checkpoint" in refused("--location-model", str(danger_model))
    assert "needs a 'danger-unet' checkpoint" in refused("--danger", str(heatmap_model))
    assert "a danger mask holds 1 (permissible) and 0 (forbidden)" in refused("--danger", str(ct_path))
    assert "neither a location prior" in refused("--location-model", str(ct_path))
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_train_singan_with_the_cli_then_fuse_its_lesions_refusing_another_modality(tmp_path, capsys):
    """`medsynth train --recipe singan` on the CT slice and a lesion mask, then `medsynth lesions` with its checkpoint."""
    ct_path = sample_path("ct_slice")
    ct = load_sample("ct_slice")
    mask = np.zeros(ct.array.shape, dtype=np.uint8)
    mask[98:110, 42:54] = 1
    mask_path = write_nifti(ct.with_array(mask, is_label=True, name="lesion"), tmp_path / "lesion_mask.nii.gz")
    tiny = ["min_size=17", "iterations=15", "width=8", "layers=3", "margin=4"]
    train_argv = ["train", "--recipe", "singan", "--data", str(ct_path), "--targets", str(mask_path),
                  "--out", str(tmp_path / "run"), "--device", "cpu"] + [a for kv in tiny for a in ("--set", kv)]  # fmt: skip
    assert main(train_argv) == 0
    checkpoint = max((tmp_path / "run").glob("*_singan/*.safetensors"))
    model = load_singan(checkpoint)
    # The checkpoint knows the crop's kind: CT in HU at the slice's pixel spacing.
    assert model.data["modality"] == "CT" and model.data["units"] == "HU"
    np.testing.assert_allclose(model.data["pixel_spacing"], ct.spacing)

    out = tmp_path / "out"
    assert main(["lesions", "--background", str(ct_path), "--lesion-model", str(checkpoint), "--per-image", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    labels = read_image(out / "synthetic_0000_mask.nii.gz", as_label=True)
    assert set(np.unique(labels.array)) == {0, 1, 2}
    row = json.loads((out / "manifest.json").read_text())["lesions"][0]
    assert row["lesion_model"] == str(checkpoint)

    # An HU lesion does not go into an MR image.
    mr_path = get_testdata_file("MR_small.dcm")
    assert read_image(mr_path).modality == "MR"
    refused = tmp_path / "refused"
    assert main(["lesions", "--background", mr_path, "--lesion-model", str(checkpoint), "--out", str(refused)]) == 2
    assert "modality CT vs MR" in capsys.readouterr().err and not refused.exists()


@pytest.mark.slow
def test_lesions_cli_writes_its_images_and_masks_on_the_background_files_grid(lesion_model, tmp_path):
    # The CT slice as a RAS-ordered file (sform code 2, qform code 1), the voxel order medsynth does not use.
    stored = nib.load(write_nifti(load_sample("ct_slice"), tmp_path / "ct_lps.nii.gz"))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(stored.shape[:2]) - 1
    affine = stored.affine @ flip
    background = nib.Nifti1Image(np.asanyarray(stored.dataobj)[::-1, ::-1], affine, header=stored.header)
    background.set_sform(affine, code=2)
    background.set_qform(affine, code=1)
    path = tmp_path / "ct_ras.nii.gz"
    nib.save(background, path)

    out = tmp_path / "out"
    assert _main(["lesions", "--background", str(path), "--lesion-model", str(lesion_model), "--out", str(out)]) == 0
    image, mask = (nib.load(out / f"synthetic_0000{suffix}.nii.gz") for suffix in ("", "_mask"))
    for written in (image, mask):
        assert written.shape == background.shape
        np.testing.assert_allclose(written.affine, background.affine, atol=1e-6)
        assert (int(written.header["sform_code"]), int(written.header["qform_code"])) == (2, 1)
    # Voxel for voxel on the background: the same values away from the lesion and its blended seam.
    values, original, labels = (np.asanyarray(img.dataobj) for img in (image, background, mask))
    assert labels.any() and np.mean(values == original) > 0.9
