"""The Lesions dock widget: the annotator's lesion-synthesis workflow of `medsynth.lesions`.

Background image (a 2D layer, or the current slice of a volume) -> lesion crop (a Shapes rectangle,
or a label's bounding box) -> SinGAN trained in a child process (or loaded) -> danger zone (a Labels
layer, 0 forbidden shown red, 1 permissible; painted, bootstrapped by the modality rules, loaded from
a mask, or predicted by a ``danger-unet`` checkpoint) -> location prior (heatmap and top-k candidate
points, fitted to historical label maps, or loaded: a saved prior or a ``lesion-heatmap`` checkpoint
that predicts the heatmap of the plane) -> placement by hand (the last or selected point or box of a
layer) or k sampled from ``C_final`` -> fusion into a NEW synthetic image layer and an editable lesion
Labels layer -> Re-fuse after moving or deleting a lesion label, Undo -> export (NIfTI, DICOM and
DICOM-SEG, marked synthetic, with the manifest records of ``medsynth lesions``).

One module per section (`background`, `model`, `danger`, `prior`, `placement`), composed by `dock`;
`common` holds what they share. The sections are thin: crops, training, danger zones, priors,
placement, fusion, the scene with its Undo history and the export are `medsynth.lesions`'s (the
session of placements is `medsynth.lesions.session.LesionSession`). The source layer is never
modified, and training runs in a worker that never touches layers or widgets.
"""

from napari_medsynth.widgets.lesions.dock import LesionWidget

__all__ = ["LesionWidget"]
