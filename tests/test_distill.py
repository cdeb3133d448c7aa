"""The `distill` recipe and `medsynth distill`: a student of a trained teacher, trained and generating on real data."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from medsynth.cli import main
from medsynth.data.samples import sample_path
from medsynth.errors import InputError, SettingsError
from medsynth.io import read_image
from medsynth.training import events
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.control import TrainControl
from medsynth.training.generate import generate, load_recipe
from medsynth.training.trainer import check_config, train

TEACHER = {"batch_size": 8, "latent_dim": 32}  # default widths (16): the student's are 4, the smallest allowed
STUDENT = {"batch_size": 8, "beta": 0.1}
"""The soft loss dominates (beta 0.1, default 1), so that 50 steps show the pull towards the teacher's images."""
TERMS = {"d_loss", "d_loss_real", "d_loss_fake", "g_loss", "soft", "hard", "pixel", "perceptual", "feature",
         "soft_discriminator"}  # fmt: skip


@pytest.fixture(scope="module")
def mni():
    """The MNI152 template's central 80 axial slices."""
    image = read_image(sample_path("mni152"))
    return image.with_array(image.array[40:120])


def run(out_dir, data, recipe="dcgan", steps=4, control=None, resume=None, **settings) -> list[events.Event]:
    config = TrainConfig(recipe=recipe, out_dir=out_dir, steps=steps, log_every=1, sample_every=0, settings=settings,
                         resume=resume)  # fmt: skip
    return list(train(config, data, control))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, mni):
    """A dcgan teacher trained briefly on MNI152 slices."""
    return run(tmp_path_factory.mktemp("teacher"), [mni], steps=100, **TEACHER)[-1].checkpoint


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, mni, teacher):
    """The untrained student (a run stopped before step 1) and a student's events over 50 distillation steps."""
    control = TrainControl()
    control.request_stop()
    initial = run(tmp_path_factory.mktemp("initial"), [mni], "distill", control=control, teacher=str(teacher), **STUDENT)
    trained = run(tmp_path_factory.mktemp("student"), [mni], "distill", steps=50, teacher=str(teacher), **STUDENT)
    return initial[-1].checkpoint, trained


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_student_has_at_most_a_quarter_of_the_teachers_parameters(teacher, distilled):
    teacher_recipe, student = load_recipe(load_checkpoint(teacher), "cpu"), load_recipe(
        load_checkpoint(distilled[1][-1].checkpoint), "cpu"
    )
    for name in ("generator", "discriminator"):
        assert parameters(student.models[name]) <= 0.25 * parameters(teacher_recipe.models[name])
    assert student.models["generator"].main[0].out_channels * 4 == teacher_recipe.models["generator"].main[0].out_channels


def test_distillation_brings_the_students_images_towards_the_teachers(teacher, distilled):
    initial, trained = distilled
    target = generate(teacher, 16, seed=3, device="cpu").array
    before = np.abs(generate(initial, 16, seed=3, device="cpu").array - target).mean()
    after = np.abs(generate(trained[-1].checkpoint, 16, seed=3, device="cpu").array - target).mean()
    assert after < 0.92 * before, (before, after)


def test_every_loss_term_is_logged_and_finite(distilled):
    progress = [e for e in distilled[1] if isinstance(e, events.Progress)]
    assert [p.step for p in progress] == list(range(1, 51))
    for p in progress:
        assert set(p.losses) == TERMS and all(math.isfinite(v) for v in p.losses.values())
    assert all(p.losses["perceptual"] > 0 and p.losses["feature"] > 0 for p in progress)
    first, last = (np.mean([p.losses["pixel"] for p in part]) for part in (progress[:5], progress[-5:]))
    assert last < 0.8 * first


def test_the_student_generates_in_the_teachers_units_and_spacing(teacher, distilled):
    checkpoint = load_checkpoint(distilled[1][-1].checkpoint)
    teacher_checkpoint = load_checkpoint(teacher)
    assert checkpoint.recipe == "distill" and checkpoint.normalization == teacher_checkpoint.normalization
    images, reference = generate(checkpoint, 5, seed=1), generate(teacher, 5, seed=1)
    assert images.array.shape == reference.array.shape == (5, 64, 64)
    assert images.spacing == pytest.approx(reference.spacing) and images.spacing[1] == pytest.approx(233 / 64)
    assert (images.modality, images.units) == (reference.modality, reference.units)
    assert images.synthetic is not None and images.synthetic.model == "distill"
    low, high = teacher_checkpoint.normalization.low, teacher_checkpoint.normalization.high
    assert low <= images.array.min() and images.array.max() <= high and images.array.max() > 1.5  # MR units


def test_the_lesion_pipeline_takes_student_backgrounds(distilled):
    from medsynth.lesions.backgrounds import generate_backgrounds

    backgrounds = generate_backgrounds(distilled[1][-1].checkpoint, 2, seed=4)
    assert [b.array.shape for b in backgrounds] == [(64, 64)] * 2
    assert backgrounds[0].synthetic.model == "distill" and backgrounds[0].spacing == pytest.approx((233 / 64,) * 2)
    np.testing.assert_array_equal(backgrounds[1].array, generate(distilled[1][-1].checkpoint, 2, seed=4).array[1])


@pytest.mark.slow
def test_medsynth_distill_then_generate_without_the_teacher_file(tmp_path, teacher):
    import nibabel as nib

    own_teacher = tmp_path / "teacher.safetensors"
    shutil.copy(teacher, own_teacher)
    volume = sample_path("mni152")
    runs = tmp_path / "runs"
    args = ["distill", "--teacher", str(own_teacher), "--width-factor", "0.25", "--temperature", "2",
            "--data", str(volume), "--out", str(runs), "--name", "student", "--steps", "2", "--set", "batch_size=4"]  # fmt: skip
    assert main(args) == 0
    checkpoint = runs / "student" / "checkpoint-0000002.safetensors"
    stored = load_checkpoint(checkpoint)
    assert stored.recipe == "distill" and stored.settings["temperature"] == 2.0 and stored.settings["batch_size"] == 4
    own_teacher.unlink()  # the student is a checkpoint of its own
    nifti = tmp_path / "student.nii.gz"
    assert main(["generate", str(checkpoint), "--num", "3", "--out", str(nifti), "--seed", "2"]) == 0
    assert nib.load(nifti).shape == (64, 64, 3) and b"SYNTHETIC" in nib.load(nifti).header["descrip"].tobytes()
    written = read_image(nifti)
    assert written.spacing == pytest.approx((1.0, 233 / 64, 233 / 64), rel=1e-4)
    assert np.allclose(written.array, generate(checkpoint, 3, seed=2).array, atol=1e-3)


@pytest.mark.parametrize("recipe, extra", [("wgan-gp", {"n_critic": 1}), ("hagan", {"mix_warmup_steps": 0})])
def test_wgan_gp_and_hagan_checkpoints_teach_too(tmp_path, mni, recipe, extra):
    teacher = run(tmp_path / "teacher", [mni], recipe, steps=2, **TEACHER, **extra)[-1].checkpoint
    got = run(tmp_path / "student", [mni], "distill", steps=2, teacher=str(teacher), **STUDENT)
    assert all(math.isfinite(v) for v in got[-1].losses.values()) and got[-1].reason == "completed"
    student = load_recipe(load_checkpoint(got[-1].checkpoint), "cpu")
    assert parameters(student.models["generator"]) <= 0.25 * parameters(load_recipe(load_checkpoint(teacher), "cpu").models["generator"])
    assert generate(got[-1].checkpoint, 2).array.shape == (2, 64, 64)


def config(tmp_path, **settings) -> TrainConfig:
    return TrainConfig(recipe="distill", out_dir=tmp_path / "run", steps=2, settings=settings)


def test_bad_teachers_and_width_factors_are_refused_naming_the_file_or_setting(tmp_path, teacher, distilled):
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(InputError, match=r"teacher checkpoint .*nowhere\.safetensors does not exist"):
        check_config(config(tmp_path, teacher=str(missing)))
    with pytest.raises(InputError, match="setting teacher is empty"):
        check_config(config(tmp_path))
    student = distilled[1][-1].checkpoint
    with pytest.raises(InputError, match=r"is a 'distill' model; distillation takes the 2D image GANs dcgan, wgan-gp, hagan"):
        check_config(config(tmp_path, teacher=str(student)))
    not_a_checkpoint = tmp_path / "brain.safetensors"
    not_a_checkpoint.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="brain.safetensors"):
        check_config(config(tmp_path, teacher=str(not_a_checkpoint)))
    with pytest.raises(InputError, match=r"width_factor 0.1 makes the student's g_channels 2 .* at least 0.25"):
        check_config(config(tmp_path, teacher=str(teacher), width_factor=0.1))
    with pytest.raises(SettingsError, match="width_factor"):
        check_config(config(tmp_path, teacher=str(teacher), width_factor=0.9))
    window = TrainConfig(recipe="distill", out_dir=tmp_path / "run", settings={"teacher": str(teacher)},
                         normalization="window", window_center=40.0)  # fmt: skip
    with pytest.raises(SettingsError, match=r"bound to.*ignored: drop normalization='window'"):
        check_config(window)  # the teacher's intensity map is used: another one is refused, not ignored
    assert not (tmp_path / "run").exists()


def test_cli_refusals_exit_2_naming_the_teacher(tmp_path, capsys):
    volume = str(sample_path("mni152"))
    code = main(["distill", "--teacher", str(tmp_path / "gone.safetensors"), "--data", volume, "--out", str(tmp_path)])
    assert code == 2 and "gone.safetensors does not exist" in capsys.readouterr().err
    code = main(["distill", "--teacher", "x", "--width-factor", "2", "--data", volume, "--out", str(tmp_path)])
    assert code == 2 and "width_factor" in capsys.readouterr().err


def test_the_train_widget_offers_distill_with_its_settings(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsynth", "Train")
    qtbot.waitUntil(lambda: "distill" in widget.recipe.choices, timeout=60_000)  # may load in the background
    widget.recipe.value = "distill"
    values = widget.settings.values()
    assert {"teacher", "width_factor", "alpha", "beta", "temperature"} <= set(values)
    assert values["width_factor"] == 0.25 and "distillation" in widget.recipe_help.value.lower()


def test_a_resumed_distillation_continues_exactly_like_a_straight_one(tmp_path, mni, teacher):
    straight = run(tmp_path / "straight", [mni], "distill", steps=4, teacher=str(teacher), batch_size=4)
    half = run(tmp_path / "half", [mni], "distill", steps=2, teacher=str(teacher), batch_size=4)[-1].checkpoint
    resumed = run(tmp_path / "resumed", [mni], "distill", steps=4, resume=half, teacher=str(teacher), batch_size=4)
    assert resumed[0].start_step == 2 and resumed[-1].losses == straight[-1].losses
    expected, actual = load_checkpoint(straight[-1].checkpoint).state, load_checkpoint(resumed[-1].checkpoint).state
    for model in ("generator", "discriminator", "adapters"):
        for name, value in expected["models"][model].items():
            assert torch.equal(value, actual["models"][model][name]), (model, name)
    assert expected["student"] == actual["student"]
