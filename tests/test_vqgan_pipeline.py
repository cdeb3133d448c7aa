"""The two-route pipeline from the command line: VQGAN backgrounds, SinGAN lesions fused into them, and
`medsynth reconstruct` writing on the input's grid. Real CT slice (HU) throughout."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from medsynth.cli import main
from medsynth.data.samples import load_sample, sample_path
from medsynth.errors import CheckpointError, InputError
from medsynth.io import read_image
from medsynth.lesions.backgrounds import generate_backgrounds
from medsynth.lesions.crop import lesion_crop
from medsynth.lesions.singan_training import SinGANSettings, train_to_end
from medsynth.training.checkpoint import load_checkpoint, save_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.generate import generate
from medsynth.training.reconstruct import reconstruct
from medsynth.training.trainer import train
from corpus import CASES, fingerprint
from test_source_grid import _assert_same_grid, ras_file  # noqa: F401 - the fixture is used by name

BAD_FILES = [case for case in CASES if case.error is not None]

pytestmark = pytest.mark.slow

TINY_VQGAN = {"resolution": 64, "batch_size": 2, "base_channels": 8, "channel_mult": "1,1,2,2", "codebook_size": 16,
              "codebook_dim": 8, "perceptual": "discriminator", "disc_channels": 8, "autoencoder_steps": 2,
              "prior_steps": 1, "prior_dim": 16, "prior_layers": 1, "prior_heads": 2}  # fmt: skip


@pytest.fixture(scope="module")
def ct():
    return load_sample("ct_slice")


@pytest.fixture(scope="module")
def background_model(tmp_path_factory, ct):
    """A tiny vqgan-hdfb on the CT slice, soft-tissue window (its untrained output is soft tissue, not bone or air)."""
    config = TrainConfig(recipe="vqgan-hdfb", out_dir=tmp_path_factory.mktemp("vqgan"), sample_every=0,
                         normalization="window", window_center=40.0, window_width=400.0, settings=TINY_VQGAN)  # fmt: skip
    return list(train(config, [ct]))[-1].checkpoint


@pytest.fixture(scope="module")
def lesion_model(tmp_path_factory, ct):
    values, mask = lesion_crop(np.asarray(ct.array, dtype=np.float32), (95, 39, 113, 57))
    path = tmp_path_factory.mktemp("singan") / "lesion.safetensors"
    train_to_end(values, mask, SinGANSettings(min_size=17, iterations=5, width=8, layers=3), checkpoint=path)
    return path


def test_generated_backgrounds_are_separate_synthetic_images_of_the_model(background_model, ct):
    backgrounds = generate_backgrounds(background_model, 3, seed=2)
    assert [b.array.shape for b in backgrounds] == [(64, 64)] * 3
    assert all(b.synthetic.model == "vqgan-hdfb" and b.synthetic.seed == 2 for b in backgrounds)
    assert all(b.modality == "CT" and b.units == "HU" for b in backgrounds)
    assert backgrounds[1].spacing == pytest.approx(tuple(s * 128 / 64 for s in ct.spacing))
    assert backgrounds[2].metadata["source"].endswith("sample 2 (seed 2)")
    assert not np.array_equal(backgrounds[0].array, backgrounds[1].array)


def test_lesions_cli_fuses_lesions_into_generated_and_given_backgrounds(background_model, lesion_model, tmp_path):
    out = tmp_path / "out"
    argv = ["lesions", "--background", str(sample_path("ct_slice")), "--background-model", str(background_model),
            "--lesion-model", str(lesion_model), "--num", "3", "--out", str(out), "--seed", "4"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["background_model"] == str(background_model)
    assert manifest["models"]["lesion_model"] == str(lesion_model)
    assert "--background-model" in manifest["command"]
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    sources = [row["background"] for row in rows]
    assert sources[0] == str(sample_path("ct_slice"))
    assert sources[1].endswith("sample 0 (seed 4)") and sources[2].endswith("sample 1 (seed 4)")
    assert all(row["background_model"] == str(background_model) for row in rows)
    # Three backgrounds were generated (--generated defaults to --num), written beside the results.
    generated = sorted(p.name for p in out.glob("generated_background_*.nii.gz"))
    assert generated == [f"generated_background_{k:04d}.nii.gz" for k in range(3)]
    fused = read_image(out / "synthetic_0001.nii.gz")
    clean = read_image(out / "generated_background_0000.nii.gz")
    labels = np.asarray(read_image(out / "synthetic_0001_mask.nii.gz", as_label=True).array)
    assert fused.array.shape == clean.array.shape == (64, 64) and labels.max() == 1
    assert fused.synthetic.model == "singan" and "recipe=vqgan-hdfb" in fused.synthetic.description
    changed = ~np.isclose(np.asarray(fused.array), np.asarray(clean.array), atol=0.5)
    assert changed[labels > 0].any() and changed[labels == 0].mean() < 0.2  # lesion and seam only


def test_lesions_cli_with_only_a_background_model_makes_one_image_per_generated_background(
    background_model, lesion_model, tmp_path
):
    out = tmp_path / "out"
    argv = ["lesions", "--background-model", str(background_model), "--lesion-model", str(lesion_model),
            "--generated", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert len(list(out.glob("synthetic_*_mask.nii.gz"))) == 2


def test_lesions_cli_refuses_a_missing_or_wrong_background_source(background_model, lesion_model, tmp_path, capsys):
    assert main(["lesions", "--lesion-model", str(lesion_model), "--out", str(tmp_path / "a")]) == 2
    assert "give --background files, --background-model CKPT, or both" in capsys.readouterr().err
    argv = ["lesions", "--background-model", str(lesion_model), "--lesion-model", str(lesion_model), "--out", str(tmp_path / "b")]
    assert main(argv) == 2
    assert "recipe 'singan' (lesion data), which does not generate background images" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(InputError, match="which does not generate background images"):
        generate_backgrounds(lesion_model, 1)


def test_reconstruct_cli_writes_on_the_inputs_grid(background_model, tmp_path, capsys):
    source = sample_path("ct_slice")
    out, difference = tmp_path / "recon.nii.gz", tmp_path / "diff.nii.gz"
    assert main(["reconstruct", str(background_model), str(source), "--out", str(out), "--difference", str(difference)]) == 0
    original = read_image(source)
    for path in (out, difference):
        written = read_image(path)
        assert written.array.shape == original.array.shape and written.synthetic is not None
        assert np.allclose(written.affine, original.affine) and written.units == "HU"
        assert "SYNTHETIC" in str(nib.load(path).header["descrip"])
    assert np.allclose(read_image(difference).array, read_image(out).array - np.asarray(original.array), atol=1e-2)
    assert main(["reconstruct", str(background_model), str(source), "--out", str(out)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


def test_reconstruct_cli_writes_on_a_ras_files_grid(background_model, ras_file, tmp_path):
    out = tmp_path / "recon.nii.gz"
    assert main(["reconstruct", str(background_model), str(ras_file), "--out", str(out), "--device", "cpu"]) == 0
    _assert_same_grid(out, ras_file)


def test_a_checkpoint_whose_settings_are_bad_or_do_not_fit_its_weights_is_refused(background_model, ct, tmp_path):
    checkpoint = load_checkpoint(background_model)

    def with_settings(name: str, **changes):
        edited = replace(checkpoint, settings={**checkpoint.settings, **changes}, path=None)
        return save_checkpoint(edited, tmp_path / f"{name}.safetensors")

    invalid = "safetensors stores settings that are not valid"
    with pytest.raises(CheckpointError, match=f"codebook.{invalid}.*codebook_size=1: must be at least 2"):
        generate(with_settings("codebook", codebook_size=1), 1, device="cpu")
    with pytest.raises(CheckpointError, match=f"mult.{invalid}.*channel_mult='1,2' must give 4"):  # a combination
        reconstruct(with_settings("mult", channel_mult="1,2"), ct, device="cpu")
    changes = {"wider": {"base_channels": 16}, "resblock": {"block": "resblock"}, "average": {"ema_decay": 0.9}}
    for name, change in changes.items():
        with pytest.raises(CheckpointError, match=f"{name}.safetensors.* does not match its recipe.s models"):
            generate(with_settings(name, **change), 1, device="cpu")


@pytest.mark.parametrize("case", BAD_FILES, ids=[case.name for case in BAD_FILES])
def test_reconstruct_refuses_each_bad_input_of_the_corpus_as_read_does(case, background_model, tmp_path, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    path = case.build(folder)
    before = fingerprint(folder)
    out = tmp_path / "recon.nii.gz"
    code = main(["reconstruct", str(background_model), str(path), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == (2 if issubclass(case.error, InputError) else 1) and re.search(case.match, err), err
    assert "Traceback" not in err and not out.exists() and fingerprint(folder) == before
