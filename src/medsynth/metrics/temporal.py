"""Temporal consistency of image sequences, needing no pretrained network.

For each sequence ``(T, H, W)`` (or ``(T, D, H, W)``) and each pair of consecutive frames we measure

- the absolute frame difference per pixel, in units of the data range;
- the optical flow from frame ``t`` to ``t + 1`` (scikit-image's iterative Lucas-Kanade, ``"ilk"``,
  or TV-L1, ``"tvl1"``) and its magnitude per pixel, in pixels per frame;
- the flow-warping error: frame ``t + 1`` warped back by that flow, mean absolute difference to frame
  ``t``, in units of the data range (how much of the change motion does not explain).

Real and synthetic sequences are compared by the 1-D Wasserstein distance between their per-pixel
distributions of frame differences and of flow magnitudes (`scipy.stats.wasserstein_distance`);
lower means the synthetic sequence moves like the real one. A frozen synthetic sequence has no
difference and no flow at all and so scores far from a moving real one, although its warping error
is a perfect 0: that is why warping errors are reported for real and synthetic side by side, to be
matched rather than minimised. Per-frame curves (one value per frame pair) show where they differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy import stats
from skimage.registration import optical_flow_ilk, optical_flow_tvl1
from skimage.transform import warp

from medsynth.errors import InputError
from medsynth.metrics.inputs import finite_array

FLOW_METHODS = {"ilk": optical_flow_ilk, "tvl1": optical_flow_tvl1}


@dataclass
class SequenceMotion:
    """Motion statistics of one sequence of T frames, per consecutive pair (T - 1 pairs)."""

    abs_diff: np.ndarray
    """``(T - 1, ...)`` absolute frame differences per pixel / data range."""
    flow_magnitude: np.ndarray
    """``(T - 1, ...)`` optical-flow magnitude per pixel, in pixels per frame."""
    warp_error: np.ndarray
    """``(T - 1,)`` mean absolute error of frame t+1 warped onto frame t, / data range."""

    @property
    def diff_curve(self) -> np.ndarray:
        """``(T - 1,)`` mean absolute frame difference per pair."""
        return self.abs_diff.reshape(len(self.abs_diff), -1).mean(axis=1)

    @property
    def flow_curve(self) -> np.ndarray:
        """``(T - 1,)`` mean flow magnitude per pair."""
        return self.flow_magnitude.reshape(len(self.flow_magnitude), -1).mean(axis=1)


@dataclass
class TemporalReport:
    """Real and synthetic sequence motion side by side, and the distances between their distributions."""

    real: SequenceMotion
    fake: SequenceMotion
    diff_wasserstein: float
    """W1 between the per-pixel frame-difference distributions (data-range units)."""
    flow_wasserstein: float
    """W1 between the per-pixel flow-magnitude distributions (pixels per frame)."""

    def summary(self) -> dict[str, float]:
        return {
            "diff_wasserstein": self.diff_wasserstein,
            "flow_wasserstein": self.flow_wasserstein,
            "warp_error_real": float(self.real.warp_error.mean()),
            "warp_error_fake": float(self.fake.warp_error.mean()),
            "mean_abs_diff_real": float(self.real.abs_diff.mean()),
            "mean_abs_diff_fake": float(self.fake.abs_diff.mean()),
            "mean_flow_real": float(self.real.flow_magnitude.mean()),
            "mean_flow_fake": float(self.fake.flow_magnitude.mean()),
        }

    def curves(self) -> dict[str, list[float]]:
        """Per-frame-pair curves, ready for plotting or JSON."""
        return {
            f"{name}_{side}": getattr(motion, attr).tolist()
            for side, motion in (("real", self.real), ("fake", self.fake))
            for name, attr in (("diff", "diff_curve"), ("flow", "flow_curve"), ("warp_error", "warp_error"))
        }


def _as_sequence(x: object, name: str) -> np.ndarray:
    shapes = "a sequence (T, H, W) or (T, D, H, W)"
    arr = finite_array(x, name, "temporal", shapes=shapes, dtype=np.float32)
    if arr.shape[0] < 2:
        raise InputError(f"temporal: {name} has {arr.shape[0]} frame(s); a sequence needs at least 2")
    return arr


def sequence_motion(frames: np.ndarray, *, data_range: float, flow: str = "ilk") -> SequenceMotion:
    """Frame differences, flow magnitudes and warping errors of a ``(T, ...)`` sequence."""
    if flow not in FLOW_METHODS:
        raise InputError(f"temporal: unknown flow method {flow!r}; choose one of {', '.join(FLOW_METHODS)}")
    # Flow and warping work on the data-range-scaled frames so that TV-L1's data term means the same for
    # every modality; an offset does not matter to either.
    scaled = np.asarray(frames, dtype=np.float32) / np.float32(data_range)
    grid = np.indices(scaled.shape[1:], dtype=np.float32)
    magnitudes, errors = [], []
    for ref, moving in pairwise(scaled):
        vector = FLOW_METHODS[flow](ref, moving).astype(np.float32)
        magnitudes.append(np.sqrt(np.sum(vector**2, axis=0)))
        warped = warp(moving, grid + vector, mode="edge", preserve_range=True)
        errors.append(float(np.mean(np.abs(warped - ref))))
    return SequenceMotion(
        abs_diff=np.abs(np.diff(scaled, axis=0)),
        flow_magnitude=np.stack(magnitudes),
        warp_error=np.asarray(errors),
    )


def temporal_consistency(
    real: object, fake: object, *, data_range: float | None = None, flow: str = "ilk"
) -> TemporalReport:
    """Compare the motion of a synthetic sequence with a real one; see the module docstring.

    `real` and `fake` are ``(T, H, W)`` or ``(T, D, H, W)`` sequences (numpy or tensors) of the same
    frame shape; their lengths may differ. `data_range` defaults to the real sequence's
    ``max - min`` over all frames (never one frame's range).
    """
    real_seq = _as_sequence(real, "real")
    fake_seq = _as_sequence(fake, "fake")
    if real_seq.shape[1:] != fake_seq.shape[1:]:
        raise InputError(
            f"temporal: real frames are {real_seq.shape[1:]} but fake frames {fake_seq.shape[1:]}; "
            "resample them to the same frame size"
        )
    if data_range is None:
        data_range = float(real_seq.max() - real_seq.min())
    if not data_range > 0:
        raise InputError(
            f"temporal: data range {data_range} is not positive (a constant real sequence?); give data_range"
        )
    real_motion = sequence_motion(real_seq, data_range=data_range, flow=flow)
    fake_motion = sequence_motion(fake_seq, data_range=data_range, flow=flow)
    return TemporalReport(
        real=real_motion,
        fake=fake_motion,
        diff_wasserstein=float(stats.wasserstein_distance(real_motion.abs_diff.ravel(), fake_motion.abs_diff.ravel())),
        flow_wasserstein=float(
            stats.wasserstein_distance(real_motion.flow_magnitude.ravel(), fake_motion.flow_magnitude.ravel())
        ),
    )
