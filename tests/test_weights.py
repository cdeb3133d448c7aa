"""Locating and reading pretrained weight files, and the networks built on them (FID Inception, VGG).

The real files cannot be downloaded here, so the tests write files with the published key names and
shapes and random values, and check that they load, that the networks use them as the published
layouts mean, and that missing or wrong files give errors that say what to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from medsynth.errors import CheckpointError, MissingWeightsError
from medsynth.weights import REGISTRY, find_weights, read_state_dict, require_weights, weights_report

# torchvision's VGG16 `features` layout: index of each convolution and its (in, out) channels.
VGG16_CONVS = {
    0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
    17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
}  # fmt: skip


@pytest.fixture
def no_weights(tmp_path, monkeypatch) -> Path:
    """Every searched place is an empty folder under tmp_path (returned: the fake home)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("MEDSYNTH_WEIGHTS_DIR", raising=False)
    return home


def _touch(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    torch.save({"w": torch.zeros(1)}, path)
    return path


def test_search_order_explicit_then_env_then_torch_hub_then_medsynth_cache(no_weights, tmp_path, monkeypatch):
    name = REGISTRY["vgg16"].filename
    assert find_weights("vgg16") is None
    in_home = _touch(no_weights / ".cache" / "medsynth" / "weights", name)
    assert find_weights("vgg16") == in_home
    in_hub = _touch(tmp_path / "torch_home" / "hub" / "checkpoints", name)
    assert find_weights("vgg16") == in_hub
    in_env = _touch(tmp_path / "env_dir", name)
    monkeypatch.setenv("MEDSYNTH_WEIGHTS_DIR", str(tmp_path / "env_dir"))
    assert find_weights("vgg16") == in_env
    explicit = _touch(tmp_path / "mine", "my-vgg.pth")
    assert find_weights("vgg16", explicit) == explicit
    assert find_weights("vgg16", _touch(tmp_path / "folder", name).parent) == tmp_path / "folder" / name
    # An explicit path is the only place searched: a wrong one is not papered over by the caches.
    assert find_weights("vgg16", tmp_path / "nowhere.pth") is None


def test_torch_fidelity_copy_of_the_inception_file_is_found(no_weights, tmp_path):
    alias = _touch(
        tmp_path / "torch_home" / "hub" / "checkpoints", "weights-inception-2015-12-05-6726825d.pth"
    )
    assert find_weights("inception-fid") == alias


def test_missing_weights_error_names_file_folders_and_url(no_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSYNTH_WEIGHTS_DIR", str(tmp_path / "env_dir"))
    with pytest.raises(MissingWeightsError) as info:
        require_weights("inception-fid")
    message = str(info.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    for folder in (tmp_path / "env_dir", tmp_path / "torch_home" / "hub" / "checkpoints",
                   no_weights / ".cache" / "medsynth" / "weights"):  # fmt: skip
        assert str(folder) in message
    assert "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" in message
    assert "MEDSYNTH_WEIGHTS_DIR" in message
    with pytest.raises(MissingWeightsError, match="pip download lpips"):
        require_weights("lpips-vgg")
    with pytest.raises(MissingWeightsError, match="nowhere.pth"):
        require_weights("vgg19", tmp_path / "nowhere.pth")
    with pytest.raises(MissingWeightsError, match="unknown weight file name 'resnet'"):
        require_weights("resnet")
    assert isinstance(info.value, FileNotFoundError)


def test_weights_report_lists_every_known_file(no_weights, tmp_path):
    found = _touch(tmp_path / "torch_home" / "hub" / "checkpoints", REGISTRY["vgg19"].filename)
    report = dict(weights_report())
    assert set(report) == {"inception-fid", "vgg16", "vgg19", "lpips-vgg"}
    assert report["vgg19"] == found
    assert report["vgg16"] is None


def test_hub_folder_is_torchs_own_without_importing_torch(tmp_path, monkeypatch):
    cases = [{"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}]
    script = (
        "import json, os, sys\n"
        "from medsynth.weights import torch_hub_checkpoints_dir, weights_report\n"
        "weights_report()\n"
        "paths = []\n"
        f"for case in {cases!r}:\n"
        "    for key in ('TORCH_HOME', 'XDG_CACHE_HOME'):\n"
        "        os.environ.pop(key, None)\n"
        "    os.environ.update(case)\n"
        "    paths.append(str(torch_hub_checkpoints_dir()))\n"
        "print(json.dumps([paths, 'torch' in sys.modules]))\n"
    )
    env = {**os.environ, "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    paths, torch_was_loaded = json.loads(out.stdout)
    assert not torch_was_loaded
    monkeypatch.setenv("HOME", str(tmp_path))
    for case, ours in zip(cases, paths):
        monkeypatch.delenv("TORCH_HOME", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for key, value in case.items():
            monkeypatch.setenv(key, value)
        assert ours == os.path.join(torch.hub.get_dir(), "checkpoints")


def test_read_state_dict_reads_torch_and_safetensors_files(tmp_path):
    state = {"a.weight": torch.randn(3, 2), "a.bias": torch.arange(3.0)}
    torch.save(state, tmp_path / "w.pth")
    save_file(state, str(tmp_path / "w.safetensors"))
    for file in ("w.pth", "w.safetensors"):
        loaded = read_state_dict(tmp_path / file)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


class _Payload:
    """Something a malicious pickle could carry instead of tensors."""


def test_read_state_dict_refuses_code_truncation_and_non_state_dicts(tmp_path):
    torch.save({"w": _Payload()}, tmp_path / "code.pth")
    with pytest.raises(CheckpointError, match="code.pth"):
        read_state_dict(tmp_path / "code.pth")
    torch.save({"w": torch.zeros(1000)}, tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(tmp_path / "cut.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="flat state dict"):
        read_state_dict(tmp_path / "list.pth")


# --- FID Inception -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    """A file with the published FID Inception layout and random values (BatchNorm stats sensible)."""
    from medsynth.models.inception import FIDInceptionV3

    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, value in FIDInceptionV3().state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # the published file predates this buffer
        if key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        elif value.ndim == 4:
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5
        elif key.endswith("bn.weight"):  # near 1, so that the signal survives 90 layers
            state[key] = 1 + 0.1 * torch.randn(value.shape, generator=gen)
        else:
            state[key] = torch.randn(value.shape, generator=gen) * 0.1
    path = tmp_path_factory.mktemp("weights") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path


def test_fid_inception_has_the_published_layout():
    from medsynth.models.inception import FIDInceptionV3

    shapes = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}
    # Keys and shapes of pt_inception-2015-12-05-6726825d.pth (the same names as torch-fidelity's copy).
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Conv2d_4a_3x3.bn.running_var"] == (192,)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7a.branch3x3_2.conv.weight"] == (320, 192, 3, 3)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["fc.weight"] == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in shapes)
    # Parameter count cross-checked against torch-fidelity 0.4.0's FeatureExtractorInceptionV3,
    # which gave identical features with the same random weights.
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 23_850_960


@pytest.mark.slow
def test_fid_inception_loads_and_extracts_pool3_features(inception_file):
    from medsynth.models.inception import FIDInceptionV3, load_fid_inception

    model = load_fid_inception(inception_file.parent)
    state = torch.load(inception_file, weights_only=True)
    assert torch.equal(model.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])
    model.train()
    assert not model.training  # BatchNorm keeps the published statistics
    ramp = torch.linspace(0, 1, 160).expand(1, 3, 128, 160)
    images = torch.cat([torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(1)), ramp])
    with torch.no_grad():
        features = model(images)
        again = model(F.interpolate(images[:1], size=(299, 299), mode="bilinear", align_corners=False))
    assert features.shape == (2, FIDInceptionV3.num_features)
    assert torch.isfinite(features).all() and (features >= 0).all()  # pooled ReLU outputs
    assert torch.allclose(features[:1], again, atol=1e-5)  # inputs are resized to 299 x 299 bilinearly
    assert not torch.allclose(features[0], features[1], atol=1e-3)


def test_fid_inception_with_wrong_keys_or_no_file(inception_file, tmp_path, no_weights):
    from medsynth.models.inception import load_fid_inception

    state = torch.load(inception_file, weights_only=True)
    state["Mixed_5b.branch1x1.conv.weights"] = state.pop("Mixed_5b.branch1x1.conv.weight")
    state["fc.weight"] = state["fc.weight"][:1000]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        load_fid_inception(tmp_path / "bad.pth")
    message = str(info.value)
    assert "bad.pth" in message
    assert "missing keys: Mixed_5b.branch1x1.conv.weight" in message
    assert "unexpected keys: Mixed_5b.branch1x1.conv.weights" in message
    assert "fc.weight (1000, 2048) (expected (1008, 2048))" in message
    with pytest.raises(MissingWeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        load_fid_inception()


# --- VGG -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory) -> Path:
    """torchvision's VGG16 file layout (`features.N.*` plus classifier entries), random values."""
    gen = torch.Generator().manual_seed(2)
    state = {}
    for index, (cin, cout) in VGG16_CONVS.items():
        state[f"features.{index}.weight"] = (
            torch.randn(cout, cin, 3, 3, generator=gen) * (2.0 / (9 * cin)) ** 0.5
        )
        state[f"features.{index}.bias"] = torch.randn(cout, generator=gen) * 0.01
    # Stand-ins for the classifier, which the features stack does not use.
    state["classifier.0.weight"] = torch.zeros(4, 8)
    state["classifier.6.bias"] = torch.zeros(4)
    path = tmp_path_factory.mktemp("weights") / "vgg16-397923af.pth"
    torch.save(state, path)
    return path


def test_vgg_layer_names_and_parameter_counts():
    from medsynth.models.vgg import VGGFeatures

    vgg16, vgg19 = VGGFeatures(16), VGGFeatures(19)
    assert vgg16.layer_names.index("relu4_3") == 22 and vgg16.layer_names.index("pool5") == 30
    assert vgg19.layer_names.index("relu5_4") == 35
    # torchvision's features stacks: 14,714,688 and 20,024,384 parameters.
    assert sum(p.numel() for p in vgg16.parameters()) == 14_714_688
    assert sum(p.numel() for p in vgg19.parameters()) == 20_024_384


def test_vgg16_loads_torchvision_layout_and_returns_named_activations(vgg16_file):
    from medsynth.models.vgg import load_vgg

    model = load_vgg(16, vgg16_file)
    state = torch.load(vgg16_file, weights_only=True)
    gray = torch.rand(2, 1, 48, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(gray, ("relu1_2", "relu2_2", "relu4_3"))
        colour = model(gray.repeat(1, 3, 1, 1), ("relu1_2",))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "relu1_2": (2, 64, 48, 40), "relu2_2": (2, 128, 24, 20), "relu4_3": (2, 512, 6, 5),
    }  # fmt: skip
    # Written out: ImageNet normalisation of the repeated gray channel, conv-ReLU, conv-ReLU.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (gray.repeat(1, 3, 1, 1) - mean) / std
    x = F.relu(F.conv2d(x, state["features.0.weight"], state["features.0.bias"], padding=1))
    x = F.relu(F.conv2d(x, state["features.2.weight"], state["features.2.bias"], padding=1))
    assert torch.allclose(out["relu1_2"], x, atol=1e-5)
    assert torch.allclose(colour["relu1_2"], x, atol=1e-5)


def test_vgg_wrong_file_or_missing_file(vgg16_file, tmp_path, no_weights):
    from medsynth.errors import InputError
    from medsynth.models.vgg import VGGFeatures, load_vgg

    with pytest.raises(CheckpointError, match="missing keys: features.16.weight"):
        load_vgg(19, vgg16_file)  # a VGG16 file is not a VGG19 file
    with pytest.raises(MissingWeightsError, match="vgg19-dcbb9e9d.pth"):
        load_vgg(19)
    with pytest.raises(InputError, match="unknown VGG16 layers"):
        VGGFeatures(16)(torch.zeros(1, 1, 32, 32), ("relu9_9",))
