"""Training losses, one per module (`dtcr`, `feature_matching`, `attnmix`); submodules import torch."""
