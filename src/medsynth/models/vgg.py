"""VGG16 / VGG19 convolutional stacks that read torchvision's ImageNet weight files.

Only the ``features`` part (convolutions, ReLUs, max pools) is built, with torchvision's module
indices so that the standard files (``features.N.weight``) load as they are; the classifier entries
of those files are ignored. Layers are named as in the perceptual-loss literature: ``conv3_2``,
``relu3_3``, ``pool4``.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from medsynth.errors import InputError
from medsynth.weights import load_into, read_state_dict, require_weights

# Channels per convolution, "M" for a 2x2 max pool (torchvision's configurations "D" and "E").
CONFIGS: dict[int, list[int | str]] = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _build(config: list[int | str]) -> tuple[nn.Sequential, list[str]]:
    """The features stack and the name of each of its modules."""
    layers: list[nn.Module] = []
    names: list[str] = []
    block, conv, channels = 1, 0, 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            conv += 1
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            channels = int(item)
    return nn.Sequential(*layers), names


class VGGFeatures(nn.Module):
    """VGG feature stack: (B, 1 or 3, H, W) floats in [0, 1] -> activations at named layers.

    One-channel images are repeated to three channels; inputs are normalised with the ImageNet
    mean and standard deviation the weights were trained with. Parameters are frozen.
    """

    def __init__(self, depth: int = 16) -> None:
        super().__init__()
        if depth not in CONFIGS:
            raise InputError(f"VGG depth must be one of {sorted(CONFIGS)}, got {depth}")
        self.depth = depth
        self.features, self.layer_names = _build(CONFIGS[depth])
        # Not persistent: the weight files do not hold them.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
                ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Activations ``{name: (B, C_l, H_l, W_l)}`` at `layers`; computation stops at the deepest one."""
        unknown = [name for name in layers if name not in self.layer_names]
        if unknown:
            raise InputError(
                f"unknown VGG{self.depth} layers {unknown}; valid: {', '.join(self.layer_names)}"
            )
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise InputError(f"VGGFeatures expects (B, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
        x = x.to(self.mean.dtype).expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        last = max(self.layer_names.index(name) for name in layers)
        out = {}
        for module, name in zip(self.features[: last + 1], self.layer_names):
            x = module(x)
            if name in layers:
                out[name] = x
        return out


def load_vgg(depth: int = 16, path: str | os.PathLike | None = None) -> VGGFeatures:
    """VGG16 or VGG19 features with torchvision's ImageNet weights (`MissingWeightsError` when absent)."""
    model = VGGFeatures(depth)
    file = require_weights(f"vgg{depth}", path)
    state = {k: v for k, v in read_state_dict(file).items() if not k.startswith("classifier.")}
    load_into(model, state, file)
    return model
