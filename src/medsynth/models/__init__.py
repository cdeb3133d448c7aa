"""Networks of the recipes (DCGAN, WGAN-GP critic, ...) and the generator EMA; submodules import torch."""
