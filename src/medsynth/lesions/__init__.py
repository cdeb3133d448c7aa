"""Controllable lesion synthesis (Tang et al. 2025, foreground route): SinGAN lesions, danger zones,
location priors, placement and fusion. GUI-free; every function takes and returns plain arrays.

Modules: `crop` (the training crop; its pixel geometry is `medsynth.data.geometry`), `danger`
(M_danger bootstrap), `location` (C_loc prior), `learned` (the danger-unet and lesion-heatmap
models), `placement` (C_final, hand and sampled placement), `fusion` (the published fusion),
`singan_training` (train, save, load, sample), `scene` (placements as values and `fuse_scene`),
`manifest` (the record of each placed lesion), `session` (one plane's placements with commit, Undo,
Re-fuse and export: the Lesions widget's state), `export` (a fused scene's files), `batch` (many
images + manifest). `singan_training`, `learned` and the modules built on them import torch.
"""
