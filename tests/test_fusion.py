"""kgan-fusion: the fusion figures (SF, SSIM to each source, SCD), the fusion generator and its recipe, on the
MNI152 T1 with its own grey-matter map as a co-registered pair (domain A: T1, domain B: GM)."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from medsynth.cli import main
from medsynth.data.domains import TwoDomains
from medsynth.data.samples import load_sample, sample_path
from medsynth.errors import InputError, SettingsError
from medsynth.io import SyntheticProvenance, read_image, write_nifti
from medsynth.losses.fusion import content_terms, sobel
from medsynth.metrics import evaluate_fusion
from medsynth.models.fusion import FusionGenerator
from medsynth.training import events
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.control import TrainControl
from medsynth.training.generate import load_recipe
from medsynth.training.trainer import train
from medsynth.training.translate import translate

AXIAL = slice(70, 110, 8)
"""Five axial slices through the middle of the brain, where the grey-matter map has structure."""


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """Axial slices ``(5, 233, 197)`` of the T1 template (0-255) and of its grey-matter map (0-255)."""
    t1, gm = (np.asarray(load_sample(name).array[AXIAL], dtype=np.float64) for name in ("mni152", "mni152_gm"))
    return t1, gm


def _figures(fused, a, b, **kwargs) -> dict[str, np.ndarray]:
    return {r.name: np.asarray(r.values) for r in evaluate_fusion(fused, a, b, **kwargs)}


# The fusion figures ---------------------------------------------------------------------------------


def test_fusion_figures_of_hand_computed_ramps():
    """A = a column ramp, B = a row ramp (uncorrelated, equal spread), fused = A: every figure follows by hand."""
    ramp = np.tile(np.arange(12.0), (12, 1))
    a, b = ramp[None], ramp.T[None]
    figures = _figures(a, a, b, range_a=(0, 11), range_b=(0, 11))
    assert list(figures) == ["sf", "ssim_a", "ssim_b", "ssim", "scd"]
    # 12 rows of 11 steps of 255/11 on the 0-255 scale, over 144 pixels; no change down the columns.
    assert figures["sf"][0] == pytest.approx(255 / 11 * math.sqrt(132 / 144))
    assert figures["ssim_a"][0] == pytest.approx(1.0)
    assert figures["ssim"][0] == pytest.approx((1.0 + figures["ssim_b"][0]) / 2)
    # corr(A - B, A) = sd(A) / sd(A - B) = 1 / sqrt(2); F - A = 0 has no correlation and counts 0.
    assert figures["scd"][0] == pytest.approx(1 / math.sqrt(2))


def test_fusion_figures_rank_real_fusions(pair):
    t1, gm = pair
    gm_in_t1_units = gm / gm.max() * t1.max()  # both sources span 0..max, so this is B on A's scale
    average = (t1 + gm_in_t1_units) / 2
    alone, mixed = _figures(t1, t1, gm), _figures(average, t1, gm)
    blurred = _figures(ndimage.gaussian_filter(average, (0, 2, 2)), t1, gm)
    assert np.all(mixed["scd"] > alone["scd"] + 0.2)  # the average carries B; A alone carries none of it
    assert np.all(mixed["ssim_b"] > alone["ssim_b"])
    np.testing.assert_allclose(alone["ssim_a"], 1.0)
    assert np.all(blurred["sf"] < 0.7 * mixed["sf"])  # blurring removes the fine detail SF measures
    assert np.all(blurred["ssim"] < mixed["ssim"])


def test_fusion_figures_refuse_bad_input(pair):
    t1, gm = pair
    with pytest.raises(InputError, match="one grid"):
        evaluate_fusion(t1, t1, gm[:, :, :-1])
    with pytest.raises(InputError, match="range_b"):
        evaluate_fusion(t1, t1, np.zeros_like(gm))
    with pytest.raises(InputError, match="NaN"):
        evaluate_fusion(np.full_like(t1, np.nan), t1, gm)


@pytest.fixture(scope="module")
def pair_files(pair, tmp_path_factory):
    """The T1 and GM slices as NIfTI volumes on the template's grid, and their average labelled synthetic."""
    folder = tmp_path_factory.mktemp("pair")
    t1, gm = pair
    template = load_sample("mni152")
    as_file = lambda array, name, **kw: write_nifti(  # noqa: E731
        template.with_array(array.astype(np.float32), **kw), folder / f"{name}.nii.gz"
    )
    average = (t1 + gm / gm.max() * t1.max()) / 2
    provenance = SyntheticProvenance("average", "0", seed=0)
    return as_file(t1, "t1"), as_file(gm, "gm"), as_file(average, "fused", synthetic=provenance)


def test_cli_fusion_figures_match_the_library(pair, pair_files, tmp_path, capsys):
    t1_path, gm_path, fused_path = map(str, pair_files)
    out = tmp_path / "fusion.json"
    args = ["evaluate", "--fused", fused_path, "--sources", t1_path, gm_path, "--slices", "--json", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["sf", "ssim_a", "ssim_b", "ssim", "scd"]
    doc = json.loads(out.read_text())
    assert set(doc["definitions"]) == {"sf", "ssim_a", "ssim_b", "ssim", "scd"}
    t1, gm = pair
    expected = _figures((t1 + gm / gm.max() * t1.max()) / 2, t1, gm)
    for row in doc["results"]:
        assert row["n"] == 5
        np.testing.assert_allclose(row["values"], expected[row["name"]], rtol=1e-5)
    assert main(["evaluate", "--metrics", "list"]) == 0
    assert "--fused" in capsys.readouterr().out


def test_cli_fusion_bad_input_exits_2(pair_files, tmp_path, capsys):
    from nibabel.testing import data_path

    t1_path, gm_path, fused_path = map(str, pair_files)
    cases = {
        "--sources": ["--fused", fused_path],
        "leave out --metrics": ["--fused", fused_path, "--sources", t1_path, gm_path, "--metrics", "psnr"],
        "leave out --real": ["--fused", fused_path, "--sources", t1_path, gm_path, "--real", t1_path],
        "one grid": ["--fused", fused_path, "--sources", t1_path, str(data_path / "anatomical.nii")],
    }
    for message, extra in cases.items():
        assert main(["evaluate", *extra]) == 2
        assert message in capsys.readouterr().err


# The generator and the content loss ------------------------------------------------------------------


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_a_12_wide_student_has_at_most_a_quarter_of_a_32_wide_teachers_parameters(pair):
    teacher, student = FusionGenerator(32), FusionGenerator(12)
    assert parameters(student) <= 0.25 * parameters(teacher)
    # Half the width is not enough: the first and last layers grow only linearly with it.
    assert parameters(FusionGenerator(16)) > 0.25 * parameters(teacher)
    t1, gm = (torch.from_numpy(x[:2, :64, :64] / 127.5 - 1).float() for x in pair)
    sources = torch.stack([t1, gm], dim=1)
    torch.testing.assert_close(student(sources), sources[:, :1])  # untrained: source A itself, then what B adds


def test_content_loss_follows_the_stronger_edges_of_the_two_sources_with_their_sign(pair):
    ramp = torch.arange(16.0).reshape(1, 1, 4, 4)  # +1 along x, +4 along y
    # Sobel: 2 * (1 + 2 + 1) * step inside; the replicated border halves the step across it.
    derivatives = sobel(ramp)[0, :, 1:3, 1:3]
    assert derivatives[0].eq(8 * 1).all() and derivatives[1].eq(8 * 4).all()
    t1, gm = (torch.from_numpy(x[2:3] / 127.5 - 1).float()[None] for x in pair)
    flat = torch.full_like(gm, -1.0)
    assert all(value == 0 for value in content_terms(t1, t1, flat).values())  # A itself, nothing in B
    with_gm = content_terms(t1, t1, gm)
    assert with_gm["intensity"] == 0 and with_gm["gradient"] > 0.01  # A lacks the GM map's edges
    assert content_terms((t1 + gm) / 2, t1, gm)["gradient"] < with_gm["gradient"]
    # The GM map's edges with its own polarity, not inverted (the T1 shows the GM/WM boundary the other way).
    assert content_terms(t1 + (gm + 1) / 2, t1, gm)["gradient"] < content_terms(t1 - (gm + 1) / 2, t1, gm)["gradient"]


# Training, distillation, fusing onto the input grid ---------------------------------------------------

TEACHER = {"resolution": 32, "batch_size": 4, "width": 16, "depth": 2, "d_channels": 8}
STUDENT = {**TEACHER, "width": 4}


@pytest.fixture(scope="module")
def volumes() -> tuple:
    """T1 and GM map of the template at 4 mm as MedImages, 30 axial slices of 59 x 50 through the brain."""
    return tuple(
        image.with_array(np.ascontiguousarray(image.array[30:150:4, ::4, ::4]))
        for image in (read_image(sample_path(name)) for name in ("mni152", "mni152_gm"))
    )


def run(out_dir, data, steps=2, control=None, **settings) -> list:
    config = TrainConfig(recipe="kgan-fusion", out_dir=out_dir, steps=steps, log_every=1, sample_every=steps,
                         settings=settings)  # fmt: skip
    return list(train(config, TwoDomains(*([image] for image in data)), control))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, volumes):
    """A kgan-fusion teacher trained briefly on T1 + GM slices: its run's events."""
    return run(tmp_path_factory.mktemp("teacher"), volumes, steps=40, **TEACHER)


@pytest.fixture(scope="module")
def student(tmp_path_factory, volumes, teacher):
    """The untrained student (a run stopped before step 1) and a student's events over 30 distillation steps."""
    path = str(teacher[-1].checkpoint)
    control = TrainControl()
    control.request_stop()
    initial = run(tmp_path_factory.mktemp("initial"), volumes, control=control, teacher=path, **STUDENT)
    trained = run(tmp_path_factory.mktemp("student"), volumes, steps=30, teacher=path, **STUDENT)
    return initial[-1].checkpoint, trained


def test_one_training_step_has_finite_named_losses_and_changes_every_model(tmp_path, volumes):
    config = TrainConfig(recipe="kgan-fusion", out_dir=tmp_path, steps=1, log_every=1, sample_every=0,
                         settings=TEACHER, augment=True)  # fmt: skip
    control = TrainControl()
    control.request_stop()
    stopped = list(train(config, TwoDomains(*([v] for v in volumes)), control))[-1].checkpoint
    initial = load_recipe(load_checkpoint(stopped))
    run_events = run(tmp_path / "one", volumes, steps=1, **TEACHER)
    [progress] = [e for e in run_events if isinstance(e, events.Progress)]
    assert set(progress.losses) == {"d_loss_a", "d_loss_b", "g_loss", "intensity", "gradient", "g_adv_a", "g_adv_b"}
    assert all(math.isfinite(v) for v in progress.losses.values())
    trained = load_recipe(load_checkpoint(run_events[-1].checkpoint))
    for name in ("generator", "discriminator_a", "discriminator_b"):
        before, after = initial.models[name].state_dict(), trained.models[name].state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point()), name


def test_the_student_learns_from_the_teacher_in_its_intensity_maps(teacher, student, volumes):
    initial, trained = student
    teacher_ckpt, student_ckpt = load_checkpoint(teacher[-1].checkpoint), load_checkpoint(trained[-1].checkpoint)
    assert student_ckpt.normalization == teacher_ckpt.normalization  # bound to the teacher's maps of A and B
    assert student_ckpt.normalization_b == teacher_ckpt.normalization_b
    teacher_model, student_model = (load_recipe(c, "cpu") for c in (teacher_ckpt, student_ckpt))
    assert parameters(student_model.models["generator"]) <= 0.25 * parameters(teacher_model.models["generator"])
    losses = [e.losses for e in trained if isinstance(e, events.Progress)]
    assert {"pixel", "soft_discriminator", "soft", "hard"} <= set(losses[-1])
    assert all(math.isfinite(v) for step in losses for v in step.values())
    target = translate(teacher_ckpt, volumes, device="cpu").array
    before = np.abs(translate(initial, volumes, device="cpu").array - target).mean()
    after = np.abs(translate(student_ckpt, volumes, device="cpu").array - target).mean()
    assert after < 0.8 * before, (before, after)


def test_fusing_lands_on_the_first_inputs_grid_in_its_units_marked_synthetic(teacher, volumes, tmp_path):
    t1, gm = volumes
    fused = translate(teacher[-1].checkpoint, [t1, gm], device="cpu")
    assert fused.array.shape == t1.array.shape and np.allclose(fused.affine, t1.affine)
    assert fused.synthetic is not None and fused.synthetic.model == "kgan-fusion" and "fuse" in fused.name
    assert 0 <= np.median(fused.array) and fused.array.max() <= 1.2 * t1.array.max()  # T1 units, not [-1, 1]
    previews = [e.images for e in teacher if isinstance(e, events.Samples)]
    assert previews and previews[-1].shape[1:] == (32, 32)
    with pytest.raises(InputError, match="two co-registered images"):
        translate(teacher[-1].checkpoint, [t1], device="cpu")
    with pytest.raises(InputError, match="not on the grid"):
        translate(teacher[-1].checkpoint, [t1, gm.with_array(gm.array[:, :-1])], device="cpu")
    shifted = gm.with_array(gm.array, origin=tuple(o + 10.0 for o in gm.origin))  # same shape, moved 10 mm
    with pytest.raises(InputError, match="not on the grid"):
        translate(teacher[-1].checkpoint, [t1, shifted], device="cpu")


def test_a_student_generates_without_its_teacher_file(teacher, student, volumes, tmp_path):
    moved = tmp_path / "teacher.safetensors"
    trained = student[1][-1].checkpoint
    checkpoint = load_checkpoint(trained)
    assert checkpoint.settings["teacher"] == str(teacher[-1].checkpoint)
    checkpoint.settings["teacher"] = str(moved)  # as if the teacher file were gone
    assert translate(checkpoint, volumes, device="cpu").array.shape == volumes[0].array.shape


def test_bad_settings_and_teachers_are_refused_before_training(tmp_path, volumes, teacher):
    with pytest.raises(SettingsError, match="multiple of 4"):
        run(tmp_path / "w", volumes, **{**TEACHER, "width": 10})
    with pytest.raises(InputError, match="does not exist"):
        run(tmp_path / "t", volumes, teacher=str(tmp_path / "nowhere.safetensors"), **STUDENT)
    dcgan = TrainConfig(recipe="dcgan", out_dir=tmp_path / "dcgan", steps=1, sample_every=0, settings={"batch_size": 4})
    other = list(train(dcgan, [volumes[0]]))[-1].checkpoint
    with pytest.raises(InputError, match="is a 'dcgan' model; a kgan-fusion student learns from kgan-fusion"):
        run(tmp_path / "s", volumes, teacher=str(other), **STUDENT)
    with pytest.raises(InputError, match="domain B has no images"):
        config = TrainConfig(recipe="kgan-fusion", out_dir=tmp_path / "b", settings=TEACHER)
        list(train(config, TwoDomains([volumes[0]], [])))


# The command line ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volume_files(tmp_path_factory):
    """The T1 and GM map at 6 mm as NIfTI files on one grid (axial planes 33 x 39), the template's affine scaled."""
    folder = tmp_path_factory.mktemp("volumes")
    paths = []
    for name in ("mni152", "mni152_gm"):
        source = nib.load(sample_path(name))
        array = np.asarray(source.dataobj, dtype=np.float32)[::6, ::6, 5:185:6]
        paths.append(folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(array, source.affine @ np.diag([6.0, 6.0, 6.0, 1.0])), paths[-1])
    return paths


def test_cli_trains_a_teacher_and_a_student_and_fuses_onto_the_t1_grid(volume_files, tmp_path, capsys):
    t1, gm = map(str, volume_files)
    options = [f"--set={key}={value}" for key, value in TEACHER.items()]
    base = ["train", "--recipe", "kgan-fusion", "--data", t1, "--data-b", gm, "--out", str(tmp_path), "--steps", "3"]
    assert main([*base, "--name", "teacher", *options]) == 0
    teacher_ckpt = sorted((tmp_path / "teacher").glob("checkpoint-*.safetensors"))[-1]
    student_options = [*options, "--set=width=4", f"--set=teacher={teacher_ckpt}"]
    assert main([*base, "--name", "student", *student_options]) == 0
    student_ckpt = sorted((tmp_path / "student").glob("checkpoint-*.safetensors"))[-1]
    out = tmp_path / "fused.nii.gz"
    assert main(["generate", str(student_ckpt), "--input", t1, "--input", gm, "--out", str(out)]) == 0
    written, given = nib.load(out), nib.load(t1)
    assert written.shape == given.shape and np.allclose(written.affine, given.affine)
    assert b"SYNTHETIC" in written.header["descrip"].tobytes() and b"kgan-fusion" in written.header["descrip"].tobytes()
    capsys.readouterr()

    # Bad input: no B domain; B on another grid; one input to fuse; a student with its own normalisation.
    assert main(["train", "--recipe", "kgan-fusion", "--data", t1, "--out", str(tmp_path), *options]) == 2
    assert "--data-b" in capsys.readouterr().err
    from nibabel.testing import data_path

    offgrid = ["train", "--recipe", "kgan-fusion", "--data", t1, "--data-b", str(data_path / "anatomical.nii")]
    assert main([*offgrid, "--out", str(tmp_path), "--name", "offgrid", *options]) == 2
    assert "has shape" in capsys.readouterr().err
    assert main(["generate", str(student_ckpt), "--input", t1, "--out", str(tmp_path / "one.nii.gz")]) == 2
    assert "two co-registered images" in capsys.readouterr().err
    assert main([*base, "--name", "bound", *student_options, "--percentile-high", "99"]) == 2
    assert "intensity map of the model it is bound to" in capsys.readouterr().err
