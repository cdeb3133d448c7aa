"""The command line under bad input and hostile conditions: every case ends in exit 2 with a message that
names the file or option and the fix (or exit 0 with correct output), before any work, never a traceback.

Cases of issue 11 (outputs that cannot be written, options that would be ignored, bad priors and
checkpoints, an early SIGTERM, unbounded requests) and issue 10 (runs never overwrite each other), on
the MNI152 template and a tiny DCGAN trained on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from medsynth.cli import main
from medsynth.data.samples import sample_path
from medsynth.errors import CheckpointError, InputError
from medsynth.io import read_image, write_nifti
from medsynth.lesions.learned import load_location_model
from medsynth.training.checkpoint import load_checkpoint, save_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.generate import generate
from medsynth.training.runs import RUN_FILE
from medsynth.training.trainer import train

TINY = ["--set", "batch_size=4", "--set", "g_channels=8", "--set", "d_channels=8", "--set", "latent_dim=16"]
TINY_SETTINGS = {"batch_size": 4, "g_channels": 8, "d_channels": 8, "latent_dim": 16}


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    """The central 40 axial slices of the MNI152 template as a NIfTI file."""
    image = read_image(sample_path("mni152"))
    return write_nifti(image.with_array(image.array[60:100]), tmp_path_factory.mktemp("data") / "mni.nii.gz")


@pytest.fixture(scope="module")
def checkpoint(volume, tmp_path_factory) -> Path:
    """A DCGAN checkpoint after two steps on `volume`."""
    config = TrainConfig(recipe="dcgan", out_dir=tmp_path_factory.mktemp("run") / "run", steps=2, device="cpu",
                         sample_every=0, settings=TINY_SETTINGS)  # fmt: skip
    return list(train(config, [read_image(volume)]))[-1].checkpoint


@pytest.fixture
def read_only_folder(tmp_path) -> Path:
    """A folder this process cannot write into: a chmod 555 folder, or for root (who may write anyway) sysfs."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        yield folder
    else:
        if not os.access("/sys/kernel", os.R_OK):
            pytest.skip("no folder here refuses this user's writes")
        yield Path("/sys/kernel")
    finally:
        folder.chmod(0o755)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def sha256(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# Outputs that cannot be written are refused before any work ------------------------------------------


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "taken"
    path.write_text("not a folder")
    return path


OUTPUT_CASES = {
    "an existing file as the folder": (lambda tmp, ro: _a_file(tmp), "is a file, not a folder"),
    "a folder inside a file": (lambda tmp, ro: _a_file(tmp) / "sub", "is a file, not a folder"),
    "a read-only folder": (lambda tmp, ro: ro / "out", "cannot be written"),
}


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
@pytest.mark.parametrize(
    "command", ["train", "train-two-domain", "generate-dicom", "generate-nifti", "translate", "lesions"]
)
def test_an_unusable_output_is_refused_before_any_work(command, case, tmp_path, read_only_folder, checkpoint, capsys):
    make, message = OUTPUT_CASES[case]
    out = make(tmp_path, read_only_folder)
    missing = tmp_path / "never_read.nii.gz"  # read only after the outputs are checked
    argv = {
        "train": ["train", "--recipe", "dcgan", "--data", missing, "--out", out, "--steps", "1"],
        "train-two-domain": ["train", "--recipe", "cyclegan", "--data", missing, "--data-b", missing, "--out", out],
        "generate-dicom": ["generate", missing, "-n", "1", "--out", out],
        "generate-nifti": ["generate", missing, "-n", "1", "--out", out / "x.nii.gz"],
        "translate": ["generate", missing, "--input", missing, "--out", out / "x.nii.gz"],
        "lesions": ["lesions", "--background", missing, "--lesion-model", missing, "--out", out],
    }[command]
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert str(out) in err and message in err and "never_read" not in err
    assert "choose" in err  # the fix


@pytest.mark.parametrize("earlier", ["manifest.csv", "manifest.json"])
def test_lesions_refuses_a_folder_holding_an_earlier_runs_results_before_any_work(earlier, tmp_path, capsys):
    out = tmp_path / "lesions"
    out.mkdir()
    (out / earlier).write_text("an earlier run")
    missing = tmp_path / "never_read.nii.gz"
    code, err = run_cli(["lesions", "--background", missing, "--lesion-model", missing, "--out", out], capsys)
    assert code == 2 and f"holds the results of an earlier run ({earlier}); choose a new or empty folder" in err
    assert "never_read" not in err and sha256(out) == {earlier: hashlib.sha256(b"an earlier run").hexdigest()}


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (lambda tmp: tmp, "is a folder; give a file name"),
        (lambda tmp: tmp / "no" / "such" / "r.json", "does not exist; create the folder or choose another path"),
        (lambda tmp: _a_file(tmp) / "r.json", "is a file, not a folder; create the folder or choose another path"),
    ],
)
@pytest.mark.parametrize("flag", ["--json", "--csv"])
def test_evaluate_checks_its_output_paths_before_reading_any_image(flag, target, message, tmp_path, capsys):
    missing = tmp_path / "never_read.nii.gz"
    code, err = run_cli(["evaluate", "--real", missing, "--fake", missing, flag, target(tmp_path)], capsys)
    assert code == 2 and flag in err and message in err and "never_read" not in err


def test_evaluate_refuses_a_read_only_results_folder(read_only_folder, tmp_path, capsys):
    missing = tmp_path / "never_read.nii.gz"
    target = read_only_folder / "r.json"
    code, err = run_cli(["evaluate", "--real", missing, "--fake", missing, "--json", target], capsys)
    assert code == 2 and str(target) in err and "cannot be written" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--metrics", "psnr,ssmi"], "unknown metric(s) ['ssmi']; choose from psnr"),
        (["--resample", "zoom"], "resample method 'zoom' is not one of pad, stretch"),
        (["--side", "0"], "resample side 0 must be at least 1 pixel"),
    ],
)
def test_evaluate_checks_metric_names_and_options_before_reading_any_image(argv, message, tmp_path, capsys):
    missing = tmp_path / "never_read.nii.gz"
    code, err = run_cli(["evaluate", "--real", missing, "--fake", missing, *argv], capsys)
    assert code == 2 and message in err and "never_read" not in err


def test_generate_refuses_an_existing_file(checkpoint, tmp_path, capsys):
    # A DICOM folder holding an earlier output: tests/test_atomic_writes.py.
    taken = tmp_path / "x.nii.gz"
    taken.write_bytes(b"mine")
    code, err = run_cli(["generate", checkpoint, "-n", "1", "--out", taken], capsys)
    assert code == 2 and "exists; choose a new file name" in err and taken.read_bytes() == b"mine"


# Options that would change nothing, and bad settings inside files ------------------------------------


@pytest.mark.parametrize(
    "option", [["--resolution", "4096"], ["--frames", "8"], ["--tile", "64"], ["--modality", "CT"]]
)
def test_sequence_options_with_a_2d_checkpoint_are_refused(option, checkpoint, tmp_path, capsys):
    code, err = run_cli(["generate", checkpoint, "-n", "1", "--out", tmp_path / "x.nii", *option], capsys)
    assert code == 2 and f"{option[0]}: for sequence recipes (hrgan-dtcr) only" in err
    assert "'dcgan' model of 2D images of 64x64 px" in err and f"drop {option[0]}" in err
    assert not (tmp_path / "x.nii").exists()


@pytest.mark.parametrize("value", ["8", "16"])
def test_a_singan_min_size_below_the_critics_receptive_field_is_refused_before_the_data_is_read(
    value, tmp_path, capsys
):
    missing = tmp_path / "never_read.nii.gz"
    argv = ["train", "--recipe", "singan", "--data", missing, "--targets", missing, "--out", tmp_path / "runs",
            "--set", f"min_size={value}"]  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 2 and f"min_size='{value}': must be at least 17" in err and "never_read" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("bandwidth", "points"),
    [([0.0, 0.05], None), ([float("nan"), 0.05], None), ([-0.1, 0.05], None), ([0.05], None), (None, [[1.5, 0.2]])],
)
def test_a_location_prior_with_a_bad_bandwidth_or_points_is_refused_naming_the_file(
    bandwidth, points, tmp_path, capsys
):
    prior = {"format": "medsynth-location-prior", "version": 1, "points": points or [[0.4, 0.5], [0.6, 0.3]],
             "bandwidth": bandwidth or [0.05, 0.05]}  # fmt: skip
    path = tmp_path / "prior.json"
    path.write_text(json.dumps(prior))  # NaN is written as the JSON extension Python reads back
    with pytest.raises(CheckpointError) as excinfo:
        load_location_model(path)
    message = str(excinfo.value)
    assert str(path) in message and "fit it again" in message
    assert ("bandwidth" in message) if bandwidth else ("points" in message)


def _edited(checkpoint: Path, folder: Path, **settings) -> Path:
    """A copy of `checkpoint` whose stored settings were edited by hand."""
    ckpt = load_checkpoint(checkpoint)
    ckpt.settings.update(settings)
    return save_checkpoint(ckpt, folder / "edited.safetensors")


@pytest.mark.parametrize("command", ["generate", "train --resume"])
def test_an_edited_checkpoints_bad_settings_are_reported_with_the_files_name(
    command, checkpoint, volume, tmp_path, capsys
):
    edited = _edited(checkpoint, tmp_path, batch_size=-3, g_channels="wide")
    if command == "generate":
        argv = ["generate", edited, "-n", "1", "--out", tmp_path / "x.nii"]
    else:
        argv = ["train", "--recipe", "dcgan", "--data", volume, "--out", tmp_path / "runs", "--steps", "5",
                "--resume", edited]  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert f"checkpoint {edited} stores settings that are not valid" in err
    assert "batch_size=-3: must be at least 1" in err and "g_channels='wide'" in err


# Unbounded requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num", "message"),
    [("0", "--num 0: the number of images must be at least 1"), ("-5", "--num -5"),
     (str(10**12), "PiB but")],  # fmt: skip
)
def test_generate_refuses_an_empty_or_absurd_request_before_writing(num, message, checkpoint, tmp_path, capsys):
    code, err = run_cli(["generate", checkpoint, "-n", num, "--out", tmp_path / "x.nii.gz"], capsys)
    assert code == 2 and message in err
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file


@pytest.mark.parametrize("out", ["x.nii", "x.nii.gz", "dicom"])
def test_generate_streams_chunks_and_writes_what_generate_makes(out, checkpoint, tmp_path, capsys, caplog):
    import pydicom

    caplog.set_level(logging.INFO, logger="medsynth")
    num = 300  # more than one 256-image chunk
    assert run_cli(["generate", checkpoint, "-n", num, "--seed", "4", "--out", tmp_path / out], capsys)[0] == 0
    assert "256/300 images" in caplog.text and "300/300 images" in caplog.text  # progress, chunk by chunk
    expected = generate(checkpoint, num, seed=4, device="cpu")
    if out.startswith("x.nii"):
        written = read_image(tmp_path / out)
        assert written.synthetic is not None and written.spacing == pytest.approx(expected.spacing)
        assert np.array_equal(np.asarray(written.array), expected.array)
    else:
        files = sorted((tmp_path / out).glob("*.dcm"))
        assert len(files) == num and files[-1].name.endswith("_0300.dcm")
        last = pydicom.dcmread(files[-1])
        assert last.SyntheticData == "YES"
        pixels = last.pixel_array * float(last.RescaleSlope) + float(last.RescaleIntercept)
        span = float(expected.array.max() - expected.array.min())
        assert np.abs(pixels - expected.array[-1]).max() < span / 1000  # 16-bit storage
    assert [p.name for p in tmp_path.iterdir()] == [out]  # no temporary file or folder left


# SIGTERM while the data is read -------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_while_the_data_is_read_ends_with_the_documented_message_and_a_checkpoint(volume, tmp_path):
    command = [sys.executable, "-m", "medsynth", "train", "--recipe", "dcgan", "--data", str(volume), "--out",
               str(tmp_path / "runs"), "--name", "early", "--steps", "1000", *TINY]  # fmt: skip
    proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # the run folder is named right before the data is read
        lines.append(line)
        if line.startswith("run folder"):
            proc.send_signal(signal.SIGTERM)
            break
    _, rest = proc.communicate(timeout=300)
    err = "".join(lines) + rest
    assert proc.returncode == 0, err
    assert "stopping after this step and writing a checkpoint" in err and "stopped at step 0" in err
    assert "Traceback" not in err
    assert load_checkpoint(tmp_path / "runs" / "early" / "checkpoint-0000000.safetensors").step == 0


@pytest.mark.slow
def test_sigterm_during_evaluate_ends_with_the_documented_message_and_no_results_file(tmp_path):
    mni = str(sample_path("mni152"))
    results = tmp_path / "results.json"
    command = [sys.executable, "-m", "medsynth", "evaluate", "--real", mni, "--fake", mni, "--slices",
               "--json", str(results)]  # fmt: skip
    proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # the images are read, the metrics about to run
        if line.startswith("evaluating"):
            proc.send_signal(signal.SIGTERM)
            break
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "medsynth: interrupted" in rest and "Traceback" not in rest
    assert list(tmp_path.iterdir()) == []


# Runs never overwrite each other (issue 10) ----------------------------------------------------------------


def test_two_runs_into_one_folder_keep_the_first_runs_files_byte_identical(volume, tmp_path, capsys):
    runs = tmp_path / "runs"
    base = ["train", "--recipe", "dcgan", "--data", volume, "--out", runs, "--steps", "2", "--device", "cpu", *TINY]
    assert run_cli(base, capsys)[0] == 0
    (first,) = runs.iterdir()
    before = sha256(first)
    assert first.name.endswith("_dcgan") and set(before) == {RUN_FILE, "checkpoint-0000002.safetensors"}
    assert run_cli([*base, "--set", "lr_g=1e-3"], capsys)[0] == 0  # other settings, same --out
    assert sha256(first) == before
    (second,) = set(runs.iterdir()) - {first}
    assert load_checkpoint(second / "checkpoint-0000002.safetensors").settings["lr_g"] == 1e-3
    assert json.loads((second / RUN_FILE).read_text())["recipe"] == "dcgan"


def test_a_named_run_is_refused_when_its_folder_holds_another_run_and_continued_with_resume(volume, tmp_path, capsys):
    runs = tmp_path / "runs"
    base = ["train", "--recipe", "dcgan", "--data", volume, "--out", runs, "--name", "a", "--device", "cpu", *TINY]
    assert run_cli([*base, "--steps", "2", "--checkpoint-every", "1"], capsys)[0] == 0
    before = sha256(runs / "a")
    code, err = run_cli([*base, "--steps", "3"], capsys)
    assert code == 2 and f"{runs / 'a'} holds another run" in err
    assert f"--resume {runs / 'a' / 'checkpoint-0000002.safetensors'}" in err and sha256(runs / "a") == before
    # Continuing from an older checkpoint would overwrite the newer one: refused too.
    code, err = run_cli([*base, "--steps", "3", "--resume", runs / "a" / "checkpoint-0000001.safetensors"], capsys)
    assert code == 2 and "is not the newest checkpoint" in err and sha256(runs / "a") == before
    # --resume of the newest continues the same run in its folder (without repeating --name).
    resume = ["--steps", "3", "--resume", runs / "a" / "checkpoint-0000002.safetensors"]
    assert run_cli([arg for arg in base if arg not in ("--name", "a")] + resume, capsys)[0] == 0
    assert sorted(p.name for p in (runs / "a").iterdir()) == [
        "checkpoint-0000001.safetensors", "checkpoint-0000002.safetensors", "checkpoint-0000003.safetensors", RUN_FILE
    ]  # fmt: skip
    assert all(sha256(runs / "a")[name] == digest for name, digest in before.items())
    assert [p.name for p in runs.iterdir()] == ["a"]


@pytest.mark.parametrize("name", ["", "..", "a/b"])
def test_a_run_name_must_be_a_plain_folder_name(name, volume, tmp_path, capsys):
    argv = ["train", "--recipe", "dcgan", "--data", volume, "--out", tmp_path, "--name", name]
    code, err = run_cli(argv, capsys)
    assert code == 2 and "must be a plain folder name" in err


def test_the_trainer_refuses_a_folder_that_holds_another_run(volume, checkpoint, tmp_path):
    folder = checkpoint.parent
    before = sha256(folder)
    config = TrainConfig(recipe="dcgan", out_dir=folder, steps=2, device="cpu", settings=TINY_SETTINGS)
    with pytest.raises(InputError, match="holds another run"):
        list(train(config, [read_image(volume)]))
    assert sha256(folder) == before


@pytest.mark.slow
@pytest.mark.parametrize("out", ["big.nii.gz", "dicom"])
def test_sigterm_during_generate_leaves_no_output_and_no_temporary_file(out, checkpoint, tmp_path):
    command = [sys.executable, "-m", "medsynth", "generate", str(checkpoint), "-n", "200000", "--device", "cpu",
               "--out", str(tmp_path / out)]  # fmt: skip
    proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # the first progress line: the output is being written
        if "/200000 images" in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "medsynth: interrupted" in rest and "Traceback" not in rest
    assert list(tmp_path.iterdir()) == []
