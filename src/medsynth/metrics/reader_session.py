"""A blinded reader study (visual Turing test) session: items, answers on disk, statistics.

A study is a list of 2D images, each either real or synthetic. Every rater sees all of them one at a
time, in their own shuffled order (seeded by the study seed and the rater's name, so that a resumed
session shows the same order and raters do not share order effects), and calls each one real or
synthetic. Nothing about an item hints at its origin: items carry a neutral id (a hash) and are
displayed by the same contrast rule (`display_image`) whatever their source.

Each answer is appended to the rater's CSV as one line and flushed to disk (``fsync``) before the
next item is shown, so a crash loses at most the answer being written; reopening the same CSV
resumes where the rater stopped. Several raters each have their own CSV; `summarise` gives each
rater's statistics (`medsynth.metrics.reader_study.reader_study`, "positive" = real) and `agreement`
Cohen's kappa between every pair of raters on the items both answered.

This module has no GUI: the plugin's reader-study widget only shows `ReaderSession.current` and
forwards key presses to `ReaderSession.answer`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import os
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.errors import InputError
from medsynth.metrics.evaluate import MetricResult
from medsynth.metrics.reader_study import inter_rater_kappa, reader_study

REAL = "real"
SYNTHETIC = "synthetic"
ANSWERS = (REAL, SYNTHETIC)
CSV_FIELDS = ("item_id", "rater", "position", "truth", "answer", "seconds", "answered_at", "source")
# Display window: the same percentiles for every item, so contrast never tells real from synthetic.
DISPLAY_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class StudyItem:
    """One 2D image of a study.

    `source` says where the image came from (layer or file, and slice); it is written to the CSV for
    the record and is never shown to the rater.
    """

    item_id: str
    truth: str
    source: str
    stack: np.ndarray = field(repr=False, compare=False)
    """The source array, (H, W) or (N, H, W); never copied or modified."""
    index: int | None = None
    """Index along the first axis of `stack`, or None when `stack` is the (H, W) image itself."""

    def image(self) -> np.ndarray:
        """The item's (H, W) image in the source's own units."""
        return np.asarray(self.stack if self.index is None else self.stack[self.index])


@dataclass(frozen=True)
class Answer:
    """One recorded answer: one row of a rater's CSV."""

    item_id: str
    rater: str
    position: int
    """1-based place of the item in this rater's order."""
    truth: str
    answer: str
    seconds: float
    """Time from showing the item to the answer."""
    answered_at: str
    """UTC time of the answer, ISO 8601."""
    source: str

    @property
    def correct(self) -> bool:
        return self.truth == self.answer


@dataclass(frozen=True)
class Agreement:
    """Cohen's kappa between two raters on the `n` items both answered (NaN when `n` is 0)."""

    rater_a: str
    rater_b: str
    n: int
    kappa: float


def display_image(image: np.ndarray) -> np.ndarray:
    """(H, W) image mapped to float32 in [0, 1] by its own 1st-99th percentile window.

    Every item goes through this same rule, so dtype, units and windowing give no hint of origin.
    """
    values = np.asarray(image, dtype=np.float32)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = np.percentile(finite, DISPLAY_PERCENTILES)
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    scale = 1.0 / (high - low) if high > low else 0.0
    return np.clip((np.nan_to_num(values, nan=low) - low) * scale, 0.0, 1.0).astype(np.float32)


def build_items(
    real: Sequence[tuple[str, np.ndarray]],
    synthetic: Sequence[tuple[str, np.ndarray]],
    *,
    min_foreground: float = 0.0,
    balance: bool = False,
    seed: int = 0,
) -> list[StudyItem]:
    """Study items from named arrays: an (H, W) array is one item, an (N, H, W) stack N items.

    Args:
        real, synthetic: ``(name, array)`` pairs.
        min_foreground: leave out nearly empty items (the air slices above and below a head) by the
            rule training uses (`medsynth.data.datasets`): an item is kept when at least this fraction
            of its pixels lie above the lowest 5 % of its source's 0.5-99.5 percentile range. 0 keeps
            every item; 0.05 keeps 137 of the MNI152 template's 189 axial slices, as training does.
        balance: as many real as synthetic items, the larger side subsampled at random (seeded by
            `seed`, the study seed), so that a rater who answers one way throughout scores 50 %.
        seed: the study seed (`ReaderSession`'s), for `balance`.

    Raises:
        InputError: no real or no synthetic image (also after leaving out empty ones), an array that
            is not 2D or 3D, two sources with the same name and origin (their items could not be
            told apart in the CSV), or `min_foreground` outside [0, 1).
    """
    if not real or not synthetic:
        missing = "real" if not real else "synthetic"
        raise InputError(f"reader study: no {missing} images were given; a study needs both real and synthetic images")
    if not 0.0 <= min_foreground < 1.0:
        raise InputError(f"reader study: min_foreground {min_foreground} must be in [0, 1), e.g. 0.05")
    items = [item for truth, named in ((REAL, real), (SYNTHETIC, synthetic)) for item in _items_of(truth, named)]
    ids = [item.item_id for item in items]
    if len(set(ids)) != len(ids):
        dupes = sorted({item.source for item in items if ids.count(item.item_id) > 1})
        raise InputError(f"reader study: sources {dupes} are given twice; give each image once")
    if min_foreground > 0:
        items = _with_foreground(items, min_foreground)
    return _balanced(items, seed) if balance else items


def _with_foreground(items: list[StudyItem], min_foreground: float) -> list[StudyItem]:
    """The items with at least `min_foreground` foreground, each source normalised as training would."""
    from medsynth.data.datasets import foreground_fraction

    normalizations: dict[int, Any] = {}
    kept = []
    for item in items:
        key = id(item.stack)
        if key not in normalizations:
            normalizations[key] = _source_normalization(item.stack)
        normalization = normalizations[key]
        if normalization is not None and foreground_fraction(normalization.apply(item.image())) >= min_foreground:
            kept.append(item)
    for truth in ANSWERS:
        if not any(item.truth == truth for item in kept):
            raise InputError(
                f"reader study: every {truth} image is nearly empty (less than {min_foreground:.0%} of its pixels "
                "above the background); lower the threshold or choose other images"
            )
    return kept


def _source_normalization(stack: np.ndarray) -> Any:
    """The percentile normalisation of one source, or None for a constant one (all of it is background)."""
    from medsynth.data.normalization import percentile_normalization

    try:
        return percentile_normalization([stack])
    except InputError:
        return None


def _balanced(items: list[StudyItem], seed: int) -> list[StudyItem]:
    """As many real as synthetic items: a seeded random subset of the larger side, in source order."""
    sides = {truth: [item for item in items if item.truth == truth] for truth in ANSWERS}
    n = min(len(side) for side in sides.values())
    rng = np.random.default_rng([seed, zlib.crc32(b"balance")])
    chosen = {side[k].item_id for side in sides.values() for k in rng.choice(len(side), n, replace=False)}
    return [item for item in items if item.item_id in chosen]


def _items_of(truth: str, named: Sequence[tuple[str, np.ndarray]]) -> Iterable[StudyItem]:
    for name, array in named:
        if array.ndim == 2:
            yield StudyItem(_item_id(truth, name), truth, name, array)
        elif array.ndim == 3:
            for k in range(array.shape[0]):
                source = f"{name}[{k}]"
                yield StudyItem(_item_id(truth, source), truth, source, array, k)
        else:
            raise InputError(
                f"reader study: {truth} image {name!r} has shape {array.shape}; give 2D images (H, W) or "
                "stacks of them (N, H, W) (take slices of a 4D or colour image first)"
            )


def _item_id(truth: str, source: str) -> str:
    """A neutral, stable id: the same sources give the same ids in every session and for every rater."""
    return hashlib.sha1(f"{truth}\0{source}".encode()).hexdigest()[:12]


def images_from_paths(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[str, np.ndarray]]:
    """Named grayscale arrays of every image in `paths` (files or folders, read by `medsynth.io.read`)."""
    from medsynth.io.read import read

    named = []
    for path in map(Path, paths):
        images = read(path)
        for k, image in enumerate(images):
            if image.is_rgb:
                raise InputError(f"reader study: {path} holds a colour image; give grayscale images")
            # Absolute names keep item ids stable however the path was typed, so sessions resume.
            name = str(path.resolve()) if len(images) == 1 else f"{path.resolve()}#{k}"
            array = image.array
            named.append((name, array.reshape(-1, *array.shape[-2:]) if array.ndim > 3 else array))
    return named


def study_order(items: Sequence[StudyItem], seed: int, rater: str) -> list[StudyItem]:
    """`items` shuffled for `rater`: the same seed and rater always give the same order."""
    rng = np.random.default_rng([seed, zlib.crc32(rater.encode())])
    return [items[k] for k in rng.permutation(len(items))]


class AnswerLog:
    """A rater's CSV of answers, appended one durable line at a time.

    A new file gets the header; an existing one must be a reader-study CSV. A last line cut short by
    a crash (no newline) is dropped on opening: its answer was never confirmed to the rater.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            raise InputError(f"reader study: {self.path} is a folder; give a CSV file name for the answers")
        if self.path.exists():
            _drop_partial_line(self.path)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append(",".join(CSV_FIELDS) + "\n")
        self.answers = read_answers(self.path)

    def append(self, answer: Answer) -> None:
        """Write `answer` as one CSV line and force it to disk before returning."""
        line = io.StringIO()
        csv.writer(line, lineterminator="\n").writerow(
            [answer.item_id, answer.rater, answer.position, answer.truth, answer.answer,
             f"{answer.seconds:.3f}", answer.answered_at, answer.source]
        )
        self._append(line.getvalue())
        self.answers.append(answer)

    def _append(self, text: str) -> None:
        # Appending one line is O(1) and a crash can only cut that line (dropped on reopening); an
        # atomic rewrite of the whole file per answer would cost O(n) for no extra safety.
        with self.path.open("a", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def _drop_partial_line(path: Path) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            os.fsync(f.fileno())


def read_answers(path: str | os.PathLike[str]) -> list[Answer]:
    """Every answer in a reader-study CSV, in file order (a line cut short by a crash is left out).

    Raises:
        InputError: the file is not a reader-study CSV, or a row is malformed (the message names the line).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"reader study: {path} does not exist; give the CSV a reader session wrote")
    text = path.read_text(encoding="utf-8")
    # A last line without a newline was cut by a crash mid-write: that answer never counted.
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(complete, newline="")))
    if not rows or tuple(rows[0]) != CSV_FIELDS:
        raise InputError(
            f"reader study: {path} is not a reader-study CSV (its first line should be {','.join(CSV_FIELDS)}); "
            "choose another file name for the answers"
        )
    answers = []
    for line_no, row in enumerate(rows[1:], start=2):
        try:
            record = dict(zip(CSV_FIELDS, row, strict=True))
            answer = Answer(
                item_id=record["item_id"], rater=record["rater"], position=int(record["position"]),
                truth=record["truth"], answer=record["answer"], seconds=float(record["seconds"]),
                answered_at=record["answered_at"], source=record["source"],
            )
        except ValueError as exc:
            raise InputError(f"reader study: {path} line {line_no} is malformed ({exc}); remove or fix that line") from None
        if answer.truth not in ANSWERS or answer.answer not in ANSWERS:
            raise InputError(
                f"reader study: {path} line {line_no}: truth {answer.truth!r} / answer {answer.answer!r} must each "
                f"be one of {ANSWERS}; remove or fix that line"
            )
        answers.append(answer)
    return answers


class ReaderSession:
    """One rater's pass through a study; resumes from the rater's CSV when it already holds answers.

    Raises:
        InputError: an empty rater name, or a CSV that belongs to another rater or to another study
            (answers for items this study does not have).
    """

    def __init__(self, items: Sequence[StudyItem], rater: str, csv_path: str | os.PathLike[str], *, seed: int = 0):
        rater = rater.strip()
        if not rater:
            raise InputError("reader study: the rater name is empty; enter a name so each rater's answers stay apart")
        if not items:
            raise InputError("reader study: the study has no items")
        self.rater = rater
        self.order = study_order(items, seed, rater)
        self.log = AnswerLog(csv_path)
        self._check_log(items)
        answered = {a.item_id for a in self.log.answers}
        self._pending = [(k + 1, item) for k, item in enumerate(self.order) if item.item_id not in answered]
        self._shown_at = time.monotonic()

    def _check_log(self, items: Sequence[StudyItem]) -> None:
        others = sorted({a.rater for a in self.log.answers} - {self.rater})
        if others:
            raise InputError(
                f"reader study: {self.log.path} holds answers of rater(s) {others}, not {self.rater!r}; "
                "give each rater their own CSV file"
            )
        truths = {item.item_id: item.truth for item in items}
        foreign = [a.source for a in self.log.answers if truths.get(a.item_id) != a.truth]
        if foreign:
            raise InputError(
                f"reader study: {self.log.path} holds answers for {len(foreign)} item(s) not in this study "
                f"(e.g. {foreign[0]!r}); open the same real and synthetic sources to resume, or choose a new CSV"
            )

    @property
    def n_total(self) -> int:
        return len(self.order)

    @property
    def n_answered(self) -> int:
        return self.n_total - len(self._pending)

    @property
    def done(self) -> bool:
        return not self._pending

    @property
    def current(self) -> StudyItem | None:
        """The item to show now; None when every item is answered."""
        return self._pending[0][1] if self._pending else None

    def answer(self, answer: str) -> Answer:
        """Record `answer` (``"real"`` or ``"synthetic"``) for the current item, durably, and move on."""
        if answer not in ANSWERS:
            raise InputError(f"reader study: answer {answer!r} must be one of {ANSWERS}")
        if not self._pending:
            raise InputError(f"reader study: all {self.n_total} items are already answered")
        position, item = self._pending[0]
        now = time.monotonic()
        record = Answer(
            item_id=item.item_id, rater=self.rater, position=position, truth=item.truth, answer=answer,
            seconds=round(now - self._shown_at, 3),
            answered_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), source=item.source,
        )
        self.log.append(record)
        self._pending.pop(0)
        self._shown_at = now
        return record

    def summary(self) -> dict[str, float]:
        """`reader_study` statistics of this rater's answers so far."""
        return summarise(self.log.answers)


def confusion_counts(answers: Iterable[Answer]) -> tuple[int, int, int, int]:
    """(TP, FN, FP, TN) with "positive" meaning real, as `reader_study` expects."""
    pairs = [(a.truth, a.answer) for a in answers]
    return (
        pairs.count((REAL, REAL)),
        pairs.count((REAL, SYNTHETIC)),
        pairs.count((SYNTHETIC, REAL)),
        pairs.count((SYNTHETIC, SYNTHETIC)),
    )


def summarise(answers: Sequence[Answer]) -> dict[str, float]:
    """`reader_study` statistics (sensitivity, specificity, accuracy, kappa, p-values, counts) of `answers`."""
    return reader_study(*confusion_counts(answers))


def answers_by_rater(paths: Iterable[str | os.PathLike[str]]) -> dict[str, list[Answer]]:
    """Each rater's answers from their CSV files.

    Raises:
        InputError: two files hold the same rater (the message names both files), or a file is empty.
    """
    by_rater: dict[str, list[Answer]] = {}
    origin: dict[str, Path] = {}
    for path in map(Path, paths):
        answers = read_answers(path)
        if not answers:
            raise InputError(f"reader study: {path} holds no answers yet")
        for rater in sorted({a.rater for a in answers}):
            if rater in origin and origin[rater] != path:
                raise InputError(
                    f"reader study: rater {rater!r} appears in both {origin[rater]} and {path}; "
                    "give each rater one CSV file"
                )
            origin[rater] = path
            by_rater.setdefault(rater, []).extend(a for a in answers if a.rater == rater)
    return by_rater


def agreement(by_rater: Mapping[str, Sequence[Answer]]) -> list[Agreement]:
    """Cohen's kappa between every pair of raters on the items both answered (real/synthetic calls)."""
    result = []
    for a, b in itertools.combinations(sorted(by_rater), 2):
        calls_a = {ans.item_id: ans.answer for ans in by_rater[a]}
        calls_b = {ans.item_id: ans.answer for ans in by_rater[b]}
        common = sorted(calls_a.keys() & calls_b.keys())
        kappa = (
            inter_rater_kappa([calls_a[i] for i in common], [calls_b[i] for i in common]) if common else float("nan")
        )
        result.append(Agreement(a, b, len(common), kappa))
    return result


_STATISTICS = (
    ("sensitivity", "real images called real"),
    ("specificity", "synthetic images called synthetic"),
    ("accuracy", "near 0.5: real and synthetic cannot be told apart"),
    ("kappa", "Cohen's kappa of answer vs truth; near 0: chance"),
    ("mcnemar_p", "McNemar (continuity-corrected) on FN vs FP"),
    ("binomial_p", "binomial test of accuracy against 0.5"),
)


def study_results(by_rater: Mapping[str, Sequence[Answer]]) -> list[MetricResult]:
    """Each rater's statistics and the agreement between raters as table rows (`MetricResult`).

    Rows are named ``"<rater>: <statistic>"`` and ``"kappa <rater a> vs <rater b>"``; `n` is the number
    of answers (or of items both raters answered) and the note gives the counts behind the figure.
    """
    rows = []
    for rater in sorted(by_rater):
        stats = summarise(by_rater[rater])
        counts = f"TP={stats['tp']} FN={stats['fn']} FP={stats['fp']} TN={stats['tn']} (positive = real)"
        for key, note in _STATISTICS:
            figure = float(stats[key])
            rows.append(MetricResult(f"{rater}: {key}", figure, float("nan"), stats["n"], [], f"{note}; {counts}"))
    for pair in agreement(by_rater):
        note = "Cohen's kappa of the two raters' calls on the items both answered"
        rows.append(MetricResult(f"kappa {pair.rater_a} vs {pair.rater_b}", pair.kappa, float("nan"), pair.n, [], note))
    return rows


def size_hint(items: Sequence[StudyItem]) -> str | None:
    """A warning when real and synthetic images differ in size, which would unblind the raters; else None."""
    shapes = {truth: {item.stack.shape[-2:] for item in items if item.truth == truth} for truth in ANSWERS}
    if shapes[REAL] == shapes[SYNTHETIC]:
        return None
    return (
        f"real images are {sorted(shapes[REAL])} but synthetic ones {sorted(shapes[SYNTHETIC])} pixels: raters may "
        "tell them apart by size; resample them to one size for a blinded study"
    )
