"""Controllable lesion synthesis (Tang et al. 2025, foreground route): SinGAN lesions, danger zones,
location priors, placement and fusion. GUI-free; every function takes and returns plain arrays.

Modules: `crop` (the training crop), `danger` (M_danger bootstrap), `location` (C_loc prior),
`placement` (C_final, hand and sampled placement), `fusion` (the published fusion), `singan_training`
(train, save, load, sample), `batch` (many images + manifest). Only `singan_training` and `batch`
import torch.
"""
