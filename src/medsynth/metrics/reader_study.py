"""Statistics of a reader study (visual Turing test): can raters tell synthetic images from real ones?

Convention: "positive" means *real*. A true positive is a real image the rater called real, a false
positive a synthetic image called real (the rater was fooled), a false negative a real image called
synthetic, a true negative a synthetic image called synthetic. Accuracy near 50% and a kappa near 0
mean the rater cannot tell them apart.

McNemar's test compares the two discordant cells, FN and FP: do raters err towards calling synthetic
images real, or real images synthetic? We use the chi-square statistic with Edwards' continuity
correction, ``max(|FN - FP| - 1, 0)^2 / (FN + FP)`` on 1 degree of freedom: it reproduces the published
visual Turing test (p = 0.045 ~ 0.046 for FN = 35, FP = 55, where the exact binomial test gives 0.0446 and the
uncorrected statistic 0.035). The exact binomial p-value is returned as well (`mcnemar_exact_p`),
which is the better choice when FN + FP is small (< 25).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from medsynth.errors import InputError


def _kappa(table: np.ndarray) -> float:
    """Cohen's kappa of a square contingency table (rows: one rating, columns: the other)."""
    total = table.sum()
    observed = np.trace(table) / total
    expected = float(np.sum(table.sum(axis=0) * table.sum(axis=1))) / total**2
    if expected == 1.0:  # both ratings constant and equal: agreement is total but kappa undefined
        return float("nan")
    return float((observed - expected) / (1.0 - expected))


def reader_study(tp: int, fn: int, fp: int, tn: int) -> dict[str, float]:
    """Sensitivity, specificity, accuracy, Cohen's kappa, McNemar and binomial p-values of a 2x2 table.

    Returns ``sensitivity`` (real called real), ``specificity`` (synthetic called synthetic),
    ``accuracy``, ``kappa`` (truth vs answer), ``mcnemar_p`` (continuity-corrected chi-square on FN
    vs FP), ``mcnemar_exact_p`` (exact binomial on FN vs FP), ``binomial_p`` (two-sided binomial test
    of accuracy against 50%), and the counts ``n``, ``tp``, ``fn``, ``fp``, ``tn``. A ratio whose
    denominator is 0 is NaN.
    """
    counts = {"tp": tp, "fn": fn, "fp": fp, "tn": tn}
    bad = {k: c for k, c in counts.items() if isinstance(c, bool) or int(c) != c or c < 0}
    if bad:
        raise InputError(f"reader study: counts {bad} must be whole numbers >= 0")
    # scipy.stats takes seconds to import; `import medsynth.metrics` should not pay for it.
    from scipy import stats

    tp, fn, fp, tn = (int(c) for c in (tp, fn, fp, tn))
    n = tp + fn + fp + tn
    if n == 0:
        raise InputError("reader study: all counts are 0; record at least one answer")
    discordant = fn + fp
    return {
        "n": n,
        **counts,
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "accuracy": (tp + tn) / n,
        "kappa": _kappa(np.array([[tp, fn], [fp, tn]], dtype=float)),
        "mcnemar_p": float(stats.chi2.sf(max(abs(fn - fp) - 1, 0) ** 2 / discordant, 1)) if discordant else 1.0,
        "mcnemar_exact_p": float(stats.binomtest(fn, discordant, 0.5).pvalue) if discordant else 1.0,
        "binomial_p": float(stats.binomtest(tp + tn, n, 0.5).pvalue),
    }


def inter_rater_kappa(answers_a: Sequence[Hashable], answers_b: Sequence[Hashable]) -> float:
    """Cohen's kappa between two raters' labels on the same items, in the same order."""
    if len(answers_a) != len(answers_b):
        raise InputError(
            f"inter-rater kappa: rater A gave {len(answers_a)} answers but rater B {len(answers_b)}; "
            "compare answers on the same items"
        )
    if not answers_a:
        raise InputError("inter-rater kappa: no answers to compare")
    labels = sorted(set(answers_a) | set(answers_b), key=str)
    index = {label: i for i, label in enumerate(labels)}
    table = np.zeros((len(labels), len(labels)))
    np.add.at(table, ([index[a] for a in answers_a], [index[b] for b in answers_b]), 1)
    return _kappa(table)
