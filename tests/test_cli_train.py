"""`medsynth train`, `generate` and `recipes` end to end on the MNI152 template and the CT sample slice."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from medsynth.cli import main
from medsynth.data.samples import load_sample
from medsynth.io import read_image, write_nifti
from medsynth.lesions.danger import bootstrap_danger
from medsynth.lesions.learned import predict_danger
from medsynth.training.checkpoint import load_checkpoint

TINY = ["--set", "batch_size=4", "--set", "g_channels=8", "--set", "d_channels=8", "--set", "latent_dim=16"]
SMALL_UNET = [f"--set={item}" for item in ("width=8", "depth=2", "resolution=64", "batch_size=4", "lr=3e-3")]


@pytest.fixture(scope="module")
def small_volume(tmp_path_factory):
    """The central 60 axial slices of the MNI152 template, written with medsynth's NIfTI writer."""
    from medsynth.data.samples import sample_path
    from medsynth.io import write_nifti

    image = read_image(sample_path("mni152"))
    return write_nifti(image.with_array(image.array[50:110]), tmp_path_factory.mktemp("data") / "mni_mid.nii.gz")


def test_train_then_generate_nifti_with_training_spacing(tmp_path, small_volume, caplog):
    caplog.set_level(logging.INFO, logger="medsynth")
    runs = tmp_path / "runs"
    code = main(["train", "--recipe", "dcgan", "--data", str(small_volume), "--out", str(runs), "--steps", "3", *TINY])
    assert code == 0
    log = caplog.text
    assert "step 3/3" in log and "d_loss=" in log and "completed at step 3" in log
    (checkpoint,) = runs.glob("*_dcgan/checkpoint-0000003.safetensors")
    assert load_checkpoint(checkpoint).settings["g_channels"] == 8

    nifti = tmp_path / "synthetic.nii.gz"
    assert main(["generate", str(checkpoint), "--num", "4", "--out", str(nifti), "--seed", "5"]) == 0
    stored = nib.load(nifti)
    assert stored.shape == (64, 64, 4)
    assert b"SYNTHETIC" in stored.header["descrip"].tobytes()
    image = read_image(nifti)
    # The 233 x 197 mm slices were padded to 233 px and shown on 64 px: 3.64 mm pixels; 1.0 between samples.
    assert image.spacing == pytest.approx((1.0, 233 / 64, 233 / 64), rel=1e-4)
    assert image.array.max() > 1.5  # MR intensities of the template, not [-1, 1]
    assert main(["generate", str(checkpoint), "--num", "4", "--out", str(nifti)]) == 2  # never overwrite


def test_generate_dicom_folder(tmp_path, small_volume):
    import pydicom

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--recipe",
                "wgan-gp",
                "--data",
                str(small_volume),
                "--out",
                str(out),
                "--steps",
                "1",
                "--set",
                "n_critic=1",
                *TINY,
            ]
        )
        == 0
    )
    folder = tmp_path / "dicom"
    (checkpoint,) = out.glob("*/checkpoint-0000001.safetensors")
    assert main(["generate", str(checkpoint), "-n", "2", "--out", str(folder)]) == 0
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 2
    ds = pydicom.dcmread(files[0])
    assert (ds.Rows, ds.Columns) == (64, 64) and "SYNTHETIC" in str(ds.DerivationDescription)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([233 / 64, 233 / 64], rel=1e-4)


def test_config_file_and_set_override(tmp_path, small_volume):
    config = tmp_path / "train.toml"
    config.write_text(
        f'recipe = "dcgan"\nout_dir = "{tmp_path / "run"}"\nsteps = 2\ndata = ["{small_volume}"]\n'
        "[settings]\nbatch_size = 4\ng_channels = 8\nd_channels = 8\nlatent_dim = 16\nlr_g = 0.001\n"
    )
    assert main(["train", "--config", str(config), "--set", "lr_g=0.0005"]) == 0
    (path,) = (tmp_path / "run").glob("*_dcgan/checkpoint-0000002.safetensors")
    ckpt = load_checkpoint(path)
    assert ckpt.settings["lr_g"] == 0.0005 and ckpt.settings["batch_size"] == 4


def test_bad_input_exits_2_with_the_reason(tmp_path, small_volume, capsys):
    base = ["train", "--data", str(small_volume), "--out", str(tmp_path / "run")]
    assert main([*base, "--recipe", "dcgan", "--set", "bogus=1", "--set", "batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert "'bogus'" in err and "batch_size" in err
    assert main([*base, "--recipe", "nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    assert main([*base, "--recipe", "dcgan", "--set", "novalue"]) == 2
    assert main(["train", "--recipe", "dcgan", "--out", str(tmp_path)]) == 2
    assert "no training data" in capsys.readouterr().err
    not_ckpt = tmp_path / "x.safetensors"
    not_ckpt.write_bytes(b"garbage")
    assert main(["generate", str(not_ckpt), "-n", "1", "--out", str(tmp_path / "o.nii")]) == 2
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory):
    """The real CT slice (HU) as NIfTI and its bootstrapped danger mask as a label NIfTI, as a user would have them."""
    folder = tmp_path_factory.mktemp("ct")
    ct = load_sample("ct_slice")
    mask = ct.with_array(bootstrap_danger(ct), is_label=True, units="", name="danger")
    return write_nifti(ct, folder / "ct.nii.gz"), write_nifti(mask, folder / "ct_danger_mask.nii.gz")


@pytest.mark.slow
def test_train_danger_unet_from_files_then_use_the_checkpoint(tmp_path, ct_files, caplog, capsys):
    caplog.set_level(logging.INFO, logger="medsynth")
    ct_path, mask_path = ct_files
    out = tmp_path / "run"
    argv = ["train", "--recipe", "danger-unet", "--data", str(ct_path), "--targets", str(mask_path), "--out", str(out),
            "--steps", "40", "--sample-every", "0", "--device", "cpu", *SMALL_UNET]  # fmt: skip
    assert main(argv) == 0
    assert "completed at step 40" in caplog.text and "bce=" in caplog.text
    checkpoint = load_checkpoint(next(out.glob("*/checkpoint-0000040.safetensors")))
    assert checkpoint.recipe == "danger-unet" and checkpoint.settings["width"] == 8

    # The checkpoint predicts the danger zone of the image read back from the file: it learnt the
    # mask it was given (IoU of the forbidden pixels; calling all forbidden scores 0.40 here).
    ct, mask = read_image(ct_path), np.asarray(read_image(mask_path, as_label=True).array)
    predicted = predict_danger(checkpoint, ct)
    forbidden, truth = predicted == 0, mask == 0
    assert predicted.shape == mask.shape
    assert (forbidden & truth).sum() / (forbidden | truth).sum() > 0.7
    # It maps images, it draws none: `generate` refuses it and says what to use instead.
    assert main(["generate", str(checkpoint.path), "-n", "1", "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "predict_danger" in capsys.readouterr().err


def test_targets_mistakes_exit_2_naming_the_problem_and_the_fix(tmp_path, ct_files, small_volume, capsys):
    ct_path, mask_path = ct_files
    out = tmp_path / "run"

    def run(*argv: str) -> str:
        assert main(["train", "--out", str(out), "--steps", "1", *argv]) == 2
        return capsys.readouterr().err

    assert "takes no --targets; drop --targets" in run("--recipe", "dcgan", "--data", str(ct_path), "--targets", str(mask_path))
    err = run("--recipe", "danger-unet", "--data", str(ct_path))
    assert "(image, target) pairs; give --targets" in err
    err = run("--recipe", "danger-unet", "--data", str(ct_path), str(ct_path), "--targets", str(mask_path))
    assert "--data has 2 image(s) but --targets 1 file(s); give exactly one target per image" in err
    err = run("--recipe", "lesion-heatmap", "--data", str(small_volume), "--targets", str(mask_path))
    assert f"target {mask_path} has shape (128, 128) but its image {small_volume}" in err and "resample it" in err
    assert not out.exists()


def test_recipes_lists_settings_with_types_defaults_and_ranges(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "dcgan  [image2d]" in out and "wgan-gp  [image2d]" in out
    assert "danger-unet  [paired, needs --targets]" in out and "lesion-heatmap  [paired, needs --targets]" in out
    gp_line = next(line for line in out.splitlines() if line.strip().startswith("gp_lambda"))
    assert "float" in gp_line and "10.0" in gp_line and "0..1000" in gp_line
    assert "one of 64, 128" in out
    assert "cyclegan  [two-domain, needs --data-b; generate --input]" in out


def test_recipes_lists_a_range_bounded_on_one_side(capsys, monkeypatch):
    from dataclasses import dataclass

    from medsynth.settings import setting
    from medsynth.training import recipe as recipe_module

    @dataclass
    class OneSided:
        steps: int = setting(10, "a count with no upper bound", min=1)

    recipe_cls = type("OneSidedRecipe", (recipe_module.Recipe,), {"name": "one-sided", "description": "test only",
                                                                   "settings_cls": OneSided})  # fmt: skip
    recipe_module.list_recipes()  # the built-in recipes load before the test one is added
    monkeypatch.setitem(recipe_module._REGISTRY, "one-sided", recipe_cls)
    assert main(["recipes"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("steps"))
    assert "1.." in line and "no upper bound" in line


@pytest.mark.slow
def test_sigterm_stops_cleanly_with_a_checkpoint(tmp_path, small_volume):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "medsynth",
        "train",
        "--recipe",
        "dcgan",
        "--data",
        str(small_volume),
        "--out",
        str(out),
        "--steps",
        "100000",
        "--log-every",
        "1",
        *TINY,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("step 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped at step" in rest
    (folder,) = out.iterdir()
    (checkpoint,) = folder.glob("*.safetensors")
    step = load_checkpoint(checkpoint).step
    assert 2 <= step < 100000 and checkpoint.name == f"checkpoint-{step:07d}.safetensors"
    assert np.isfinite(load_checkpoint(checkpoint).state["models"]["generator"]["main.0.weight"].numpy()).all()


@pytest.mark.parametrize(
    ("seed", "problem"),
    [("-1", "must be at least 0"), (str(2**32), f"must be at most {2**32 - 1}"), (str(2**64), "must be at most")],
)
def test_a_seed_out_of_range_exits_2_before_any_data_is_read(tmp_path, seed, problem, capsys):
    missing = tmp_path / "not_there.nii.gz"  # read only after the options are checked
    argv = ["train", "--recipe", "dcgan", "--data", str(missing), "--out", str(tmp_path / "run"), "--seed", seed]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"seed={seed}: {problem}" in err
    assert "not_there" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_config_values_of_the_wrong_type_exit_2_naming_each_key_and_what_it_takes(tmp_path, small_volume, capsys):
    config = tmp_path / "train.toml"
    config.write_text(
        f'recipe = "dcgan"\nsteps = "many"\nwindow_width = "wide"\nout_dir = 5\nsettings = "x"\ndata = ["{small_volume}"]\n'
    )
    assert main(["train", "--config", str(config), "--set", "batch_size=4"]) == 2
    err = capsys.readouterr().err
    assert "steps='many' (expected a whole number)" in err
    assert "window_width='wide' (expected a number)" in err
    assert "out_dir=5 (expected a folder path)" in err
    assert "settings='x' (expected a table of recipe settings" in err
    assert err.count("medsynth: error:") == 1  # one error naming them all

    json_config = tmp_path / "train.json"
    json_config.write_text(json.dumps({"recipe": "dcgan", "out_dir": str(tmp_path / "run"), "data": 5}))
    assert main(["train", "--config", str(json_config)]) == 2
    assert "data=5 must be a file path or a list of them" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_recipe_or_output_folder_names_the_flags_and_the_config_keys(tmp_path, small_volume, capsys):
    assert main(["train", "--data", str(small_volume)]) == 2
    err = capsys.readouterr().err
    assert "--recipe NAME (or `recipe` in the config file)" in err
    assert "--out DIR (or `out_dir` in the config file)" in err
    assert main(["train", "--recipe", "dcgan", "--data", str(small_volume)]) == 2
    err = capsys.readouterr().err
    assert "--out DIR" in err and "--recipe" not in err


def test_a_failure_during_training_exits_1_with_the_reason(tmp_path, small_volume, monkeypatch, capsys):
    from medsynth.training.recipes.dcgan import DCGANRecipe

    monkeypatch.setattr(DCGANRecipe, "train_step", lambda self, batch, step: {"g_loss": float("nan")})
    argv = ["train", "--recipe", "dcgan", "--data", str(small_volume), "--out", str(tmp_path / "run"), "--steps", "2"]
    assert main([*argv, *TINY]) == 1
    err = capsys.readouterr().err
    assert "medsynth: failed: step 1: loss g_loss=nan is not finite" in err and "Traceback" not in err
    assert not list((tmp_path / "run").glob("*/*.safetensors"))  # no broken model written
