"""Training data: datasets of 2D slices, 2D+t clips and patches, intensity normalisation, augmentation.

Submodules import torch; this package itself stays light.
"""
