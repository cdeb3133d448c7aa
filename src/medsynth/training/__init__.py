"""The training engine: recipes, the trainer loop, checkpoints, generation and multi-GPU support.

`events` and `control` are light; the other submodules import torch.
"""
