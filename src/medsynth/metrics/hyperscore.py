"""HyperScore: one number from several quality scores, as the temporal-GAN paper defines it.

``HyperScore(V) = 100 * [1 + (sigmoid(beta * ln V + gamma))^kappa]`` for an aggregate quality
``V`` in (0, 1], with ``V`` a weighted mean of per-criterion scores in (0, 1] (`aggregate_v`).
The paper's defaults are ``beta = 5``, ``gamma = -ln 2``, ``kappa = 2``; the score then runs from 100
(V -> 0) to 100 * (1 + (1/3)^2) ~ 111.1 (V = 1). The paper's worked example states 137.2 for
V = 0.95, but its own formula gives 107.78 and cannot exceed 111.1 with these parameters
(docs/metrics.md); we implement the formula.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from medsynth.errors import InputError


def hyperscore(v: float, beta: float = 5.0, gamma: float = -math.log(2), kappa: float = 2.0) -> float:
    """``100 * (1 + sigmoid(beta * ln v + gamma) ** kappa)`` for ``0 < v <= 1``."""
    if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and 0.0 < v <= 1.0):
        raise InputError(f"HyperScore: V = {v!r} is outside (0, 1]; give an aggregate quality score in (0, 1]")
    z = beta * math.log(v) + gamma
    return 100.0 * (1.0 + (1.0 / (1.0 + math.exp(-z))) ** kappa)


def aggregate_v(scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted mean of named scores in (0, 1]; `weights` (>= 0, same names) are normalised to sum 1."""
    if not scores:
        raise InputError("HyperScore: no scores to aggregate; give at least one named score in (0, 1]")
    if set(scores) != set(weights):
        raise InputError(
            f"HyperScore: scores name {sorted(scores)} but weights name {sorted(weights)}; give one weight per score"
        )
    bad = {k: s for k, s in scores.items() if not 0.0 < s <= 1.0}
    if bad:
        raise InputError(f"HyperScore: scores {bad} are outside (0, 1]; rescale each criterion to (0, 1] first")
    negative = {k: w for k, w in weights.items() if not w >= 0.0}
    total = math.fsum(weights.values())
    if negative or not total > 0.0:
        raise InputError(f"HyperScore: weights {dict(weights)} must be >= 0 with a positive sum")
    return math.fsum(weights[k] * scores[k] for k in scores) / total
