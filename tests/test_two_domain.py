"""Two-domain training and translation: data, normalisations, checkpoints, `translate` and the CLI.

A one-pixel translator learns the exact map between two co-registered domains made from the MNI152
template (B = 1000 - 2 A, in other units), so the whole path (per-domain normalisation, training,
checkpoint, translation back in B's units on A's grid) can be checked against the known answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medsynth.cli import main
from medsynth.data.datasets import fit_square
from medsynth.data.domain_dataset import DomainPairDataset
from medsynth.data.domains import TwoDomains
from medsynth.data.normalization import percentile_normalization
from medsynth.errors import InputError
from medsynth.io import read_image
from medsynth.settings import setting
from medsynth.training import recipe as recipe_module
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.events import Samples
from medsynth.training.trainer import train
from medsynth.training.translate import translate


@dataclass
class PixelMapSettings:
    resolution: int = setting(32, "Training side length", choices=(16, 32))
    batch_size: int = setting(8, "Slices per batch", min=1, max=64)
    lr: float = setting(0.05, "Adam learning rate", min=1e-5, max=1.0)


class PixelTranslator(recipe_module.TranslationRecipe):
    """A 1x1 convolution per direction, fitted by least squares to co-registered pairs."""

    name = "test-pixel-translator"
    description = "test only: one linear map per pixel and direction"
    settings_cls = PixelMapSettings
    registered = True
    directions = {"a2b": "b", "b2a": "a"}

    def build(self, settings, device):
        self.settings, self.device = settings, device
        self.models = {name: nn.Conv2d(1, 1, 1).to(device) for name in self.directions}
        self.optimizers = {name: torch.optim.Adam(m.parameters(), lr=settings.lr) for name, m in self.models.items()}

    def train_step(self, batch, step):
        a, b = batch[:, :1], batch[:, 1:]
        losses = {}
        for name, (source, target) in {"a2b": (a, b), "b2a": (b, a)}.items():
            loss = F.mse_loss(self.trainable(name)(source), target)
            self.optimize(name, loss)
            losses[name] = loss.item()
        return losses

    @torch.no_grad()
    def translate(self, images, direction):
        return self.models[direction](images)


class UnpairedTranslator(PixelTranslator):
    name = "test-unpaired-translator"
    registered = False


@pytest.fixture
def translators():
    """The test recipes, registered for one test only (the registry lists every real recipe elsewhere)."""
    for cls in (PixelTranslator, UnpairedTranslator):
        recipe_module.register_recipe(cls)
    yield
    for cls in (PixelTranslator, UnpairedTranslator):
        recipe_module._REGISTRY.pop(cls.name, None)


@pytest.fixture
def domain_files(tmp_path, mni152_path):
    """The MNI152 template at 6 mm (domain A, its own affine) and B = 1000 - 2 A on the same grid.

    Axial planes are 32 x 32, the training size, so translation error is the model's, not resampling's.
    """
    source = nib.load(mni152_path)
    affine = source.affine @ np.diag([6.0, 6.0, 6.0, 1.0])
    a = np.asarray(source.dataobj, dtype=np.float32)[::6, ::6, ::6][:32, :32]
    paths = tmp_path / "t1.nii.gz", tmp_path / "inverted.nii.gz"
    nib.save(nib.Nifti1Image(a, affine), paths[0])
    nib.save(nib.Nifti1Image(1000.0 - 2.0 * a, affine), paths[1])
    return paths


def test_registered_items_pair_the_same_plane_each_in_its_own_map(domain_files):
    a, b = (read_image(path) for path in domain_files)
    maps = percentile_normalization([a.array]), percentile_normalization([b.array])
    dataset = DomainPairDataset(TwoDomains([a], [b]), maps, 16, registered=True, slice_axis=0)
    assert len(dataset) == len(dataset.a) > 5
    covered = fit_square(torch.ones(1, *dataset.a.plane_shape(a)), 16)[0] > 0.999  # not the square's padding
    for i in (0, len(dataset) // 2, len(dataset) - 1):
        item = dataset[i]
        assert item.shape == (2, 16, 16)
        # B is A mirrored in intensity, so the normalised B plane is the normalised A plane negated.
        torch.testing.assert_close(item[1][covered], -item[0][covered], atol=0.02, rtol=0)
    described = dataset.describe()
    assert described["registered"] is True and described["b"]["images"][0]["shape"] == list(b.array.shape)


def test_unpaired_items_draw_b_independently_of_a(domain_files, ct_slice_path):
    a, b = read_image(ct_slice_path), read_image(domain_files[0])
    maps = percentile_normalization([a.array]), percentile_normalization([b.array])
    dataset = DomainPairDataset(TwoDomains([a], [b]), maps, 16, registered=False, slice_axis=0)
    assert len(dataset) == len(dataset.b) > len(dataset.a) == 1
    torch.manual_seed(0)
    draws = torch.stack([dataset[0][1] for _ in range(8)])
    assert len({tuple(plane.flatten().tolist()) for plane in draws}) > 1
    torch.manual_seed(0)
    torch.testing.assert_close(torch.stack([dataset[0][1] for _ in range(8)]), draws)


def test_registered_domains_off_grid_are_refused(domain_files, ct_slice_path):
    a, b = read_image(domain_files[0]), read_image(ct_slice_path)
    maps = percentile_normalization([a.array]), percentile_normalization([b.array])
    with pytest.raises(InputError, match="domain-B image 0.*has shape"):
        DomainPairDataset(TwoDomains([a], [b]), maps, 16, registered=True)
    with pytest.raises(InputError, match="one B image per A image"):
        DomainPairDataset(TwoDomains([a], [a, a]), maps, 16, registered=True)


def test_training_saves_both_maps_and_translation_lands_in_b_units_on_a_grid(translators, domain_files, tmp_path):
    a, b = (read_image(path) for path in domain_files)
    config = TrainConfig(recipe="test-pixel-translator", out_dir=tmp_path / "run", steps=150, log_every=50,
                         checkpoint_every=1000, sample_every=150, augment=False)  # fmt: skip
    events = list(train(config, TwoDomains([a], [b])))
    checkpoint = load_checkpoint(events[-1].checkpoint)
    map_a, map_b = checkpoint.normalization, checkpoint.normalization_b
    # Each domain has its own map: B's percentiles are A's mirrored by B = 1000 - 2 A.
    assert map_b.low == pytest.approx(1000 - 2 * map_a.high, rel=1e-3)
    assert map_b.high == pytest.approx(1000 - 2 * map_a.low, rel=1e-3)
    assert checkpoint.data["b"]["images"][0]["name"] == b.name
    previews = [event.images for event in events if isinstance(event, Samples)]
    assert previews and map_b.low - 1 <= previews[-1].min() and previews[-1].max() <= map_b.high + 1  # B's units

    result = translate(checkpoint, [a])
    assert result.array.shape == a.array.shape and np.allclose(result.affine, a.affine)
    assert result.synthetic is not None and "a2b" in result.name
    inside = a.array > np.percentile(a.array, 60)  # away from the clipped tails of the percentile map
    error = np.abs(result.array - b.array)[inside]
    assert np.median(error) < 0.05 * np.ptp(b.array[inside])

    back = translate(checkpoint, [b], direction="b2a")
    assert np.median(np.abs(back.array - a.array)[inside]) < 0.05 * np.ptp(a.array[inside])
    with pytest.raises(InputError, match="direction 'sideways'"):
        translate(checkpoint, [a], direction="sideways")
    with pytest.raises(InputError, match="takes one image"):
        translate(checkpoint, [a, b])


def test_cli_trains_on_two_domains_and_translates_onto_the_input_grid(translators, domain_files, tmp_path, capsys):
    a_path, b_path = domain_files
    base = ["train", "--recipe", "test-pixel-translator", "--out", str(tmp_path / "runs"), "--steps", "60"]
    assert main([*base, "--data", str(a_path)]) == 2
    assert "--data-b" in capsys.readouterr().err
    assert main([*base, "--data", str(a_path), "--data-b", str(b_path), "--name", "one"]) == 0
    checkpoint = sorted((tmp_path / "runs" / "one").glob("checkpoint-*.safetensors"))[-1]

    out = tmp_path / "translated.nii.gz"
    assert main(["generate", str(checkpoint), "--num", "3", "--out", str(out)]) == 2
    assert "--input" in capsys.readouterr().err
    assert main(["generate", str(checkpoint), "--input", str(a_path), "--out", str(out)]) == 0
    written, given = nib.load(out), nib.load(a_path)
    assert written.shape == given.shape and np.allclose(written.affine, given.affine)
    assert b"SYNTHETIC" in written.header["descrip"].tobytes()
    assert b_path.read_bytes() and a_path.exists()  # inputs untouched

    unpaired = ["train", "--recipe", "dcgan", "--out", str(tmp_path / "runs"), "--data", str(a_path)]
    assert main([*unpaired, "--data-b", str(b_path)]) == 2
    assert "takes no --data-b" in capsys.readouterr().err


def test_a_fixed_window_is_refused_for_domains_in_different_units(translators, domain_files, ct_slice_path, tmp_path):
    mr, ct = read_image(domain_files[0]), read_image(ct_slice_path)
    config = TrainConfig(recipe="test-unpaired-translator", out_dir=tmp_path / "run", steps=2,
                         normalization="window", window_center=40, window_width=400)  # fmt: skip
    with pytest.raises(InputError, match="normalization=percentile") as refused:
        list(train(config, TwoDomains([ct], [mr])))
    assert "CT (HU)" in str(refused.value)
    assert not list((tmp_path / "run").glob("checkpoint-*"))
