"""Training losses, one per module (`dtcr`, `feature_matching`); submodules import torch."""
