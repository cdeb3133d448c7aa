"""The GUI-free reader-study session: blinding, durable answers, resume, per-rater statistics, agreement."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from scipy import ndimage
from sklearn.metrics import cohen_kappa_score

from medsynth.errors import InputError
from medsynth.metrics.reader_session import (
    CSV_FIELDS,
    REAL,
    SYNTHETIC,
    ReaderSession,
    agreement,
    answers_by_rater,
    build_items,
    confusion_counts,
    display_image,
    images_from_paths,
    read_answers,
    study_order,
)
from medsynth.metrics.reader_study import reader_study


@pytest.fixture(scope="module")
def ct_hu() -> np.ndarray:
    """The 128x128 CT slice that pydicom ships, in HU."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.fixture(scope="module")
def study(ct_hu):
    """6 real images (shifted crops) and 6 'synthetic' ones (blurred, noisy copies) of the CT slice."""
    rng = np.random.default_rng(3)
    real = np.stack([np.roll(ct_hu, 5 * k, axis=1) for k in range(6)])
    fake = np.stack([ndimage.gaussian_filter(r, 1.5) + rng.normal(0, 20, r.shape) for r in real])
    return build_items([("ct", real)], [("gan", fake)])


def _answer_rule(item) -> str:
    """A rater who spots every synthetic image but calls a third of real images synthetic."""
    return SYNTHETIC if item.truth == SYNTHETIC or item.index % 3 == 0 else REAL


def test_items_are_blinded_stable_and_complete(study, ct_hu):
    assert len(study) == 12
    assert sorted(i.truth for i in study).count(REAL) == 6
    ids = [i.item_id for i in study]
    assert len(set(ids)) == 12
    assert all(REAL not in i and SYNTHETIC not in i and "ct" not in i for i in ids)
    assert [i.item_id for i in build_items([("ct", np.stack([ct_hu] * 6))], [("gan", ct_hu[None])])][:6] == ids[:6]
    np.testing.assert_array_equal(study[2].image(), np.roll(ct_hu, 10, axis=1))


def test_bad_sources_are_refused(ct_hu):
    with pytest.raises(InputError, match="no synthetic"):
        build_items([("ct", ct_hu)], [])
    with pytest.raises(InputError, match=r"shape \(1, 1, 128, 128\)"):
        build_items([("ct", ct_hu)], [("vol", ct_hu[None, None])])
    with pytest.raises(InputError, match="given twice"):
        build_items([("ct", ct_hu), ("ct", ct_hu)], [("gan", ct_hu)])


def test_order_is_seeded_per_rater(study):
    order_a = [i.item_id for i in study_order(study, 0, "ann")]
    assert order_a == [i.item_id for i in study_order(study, 0, "ann")]
    assert sorted(order_a) == sorted(i.item_id for i in study)
    assert order_a != [i.item_id for i in study_order(study, 0, "bob")]
    assert order_a != [i.item_id for i in study_order(study, 1, "ann")]


def test_display_gives_no_hint_of_units_or_dtype(ct_hu):
    """A synthetic image stored in other units (scaled, shifted, float) displays exactly like the real one."""
    shown_real = display_image(ct_hu.astype(np.int16))
    shown_fake = display_image((ct_hu.astype(np.float64) + 1024.0) / 4095.0)
    assert shown_real.dtype == shown_fake.dtype == np.float32
    np.testing.assert_allclose(shown_real, shown_fake, atol=1e-5)
    assert shown_real.min() == 0.0 and shown_real.max() == 1.0
    low, high = np.percentile(ct_hu, [1, 99])
    np.testing.assert_allclose(shown_real, np.clip((ct_hu - low) / (high - low), 0, 1), atol=1e-5)
    assert not display_image(np.full((4, 4), 7.0)).any()


def test_each_answer_is_on_disk_at_once_and_the_session_resumes(study, tmp_path):
    path = tmp_path / "ann.csv"
    session = ReaderSession(study, "ann", path, seed=7)
    assert (session.n_total, session.n_answered) == (12, 0)
    shown = []
    for k in range(5):
        shown.append(session.current)
        session.answer(_answer_rule(session.current))
        lines = path.read_text().splitlines()
        assert len(lines) == k + 2 and lines[0] == ",".join(CSV_FIELDS)
        assert lines[-1].startswith(shown[-1].item_id + ",ann,")
    del session

    resumed = ReaderSession(study, "ann", path, seed=7)
    assert resumed.n_answered == 5
    assert resumed.current.item_id not in {i.item_id for i in shown}
    assert resumed.current is resumed.order[5]
    while not resumed.done:
        resumed.answer(_answer_rule(resumed.current))
    with pytest.raises(InputError, match="already answered"):
        resumed.answer(REAL)

    answers = read_answers(path)
    assert [a.position for a in answers] == list(range(1, 13))
    assert sorted(a.item_id for a in answers) == sorted(i.item_id for i in study)
    truth = {i.item_id: i.truth for i in study}
    assert all(a.truth == truth[a.item_id] for a in answers)
    tp, fn, fp, tn = 4, 2, 0, 6  # real items with index 0 and 3 are called synthetic
    assert confusion_counts(answers) == (tp, fn, fp, tn)
    assert resumed.summary() == reader_study(tp, fn, fp, tn)


def test_a_line_cut_by_a_crash_is_dropped_and_asked_again(study, tmp_path):
    path = tmp_path / "ann.csv"
    session = ReaderSession(study, "ann", path)
    session.answer(REAL)
    second = session.current
    with path.open("a") as f:  # what a crash in the middle of writing the second answer leaves
        f.write(f"{second.item_id},ann,2,{second.truth},rea")
    assert len(read_answers(path)) == 1
    resumed = ReaderSession(study, "ann", path)
    assert resumed.n_answered == 1 and resumed.current is second
    resumed.answer(SYNTHETIC)
    assert [a.answer for a in read_answers(path)] == [REAL, SYNTHETIC]


def test_a_csv_of_another_rater_or_study_is_refused(study, tmp_path, ct_hu):
    path = tmp_path / "ann.csv"
    ReaderSession(study, "ann", path).answer(REAL)
    with pytest.raises(InputError, match=r"rater\(s\) \['ann'\]"):
        ReaderSession(study, "bob", path)
    other = build_items([("other", ct_hu)], [("gan2", ct_hu)])
    with pytest.raises(InputError, match="not in this study"):
        ReaderSession(other, "ann", path)
    with pytest.raises(InputError, match="rater name is empty"):
        ReaderSession(study, "  ", tmp_path / "x.csv")
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="notes.csv is not a reader-study CSV"):
        ReaderSession(study, "ann", tmp_path / "notes.csv")


def test_agreement_between_raters_matches_scikit_learn(study, tmp_path):
    rng = np.random.default_rng(0)
    calls = {}
    for rater in ("ann", "bob", "cy"):
        session = ReaderSession(study, rater, tmp_path / f"{rater}.csv")
        while not session.done:
            answer = REAL if rng.random() < 0.5 else SYNTHETIC
            calls.setdefault(rater, {})[session.current.item_id] = answer
            session.answer(answer)
    by_rater = answers_by_rater(sorted(tmp_path.glob("*.csv")))
    assert sorted(by_rater) == ["ann", "bob", "cy"]
    pairs = agreement(by_rater)
    assert [(p.rater_a, p.rater_b, p.n) for p in pairs] == [("ann", "bob", 12), ("ann", "cy", 12), ("bob", "cy", 12)]
    ids = sorted(calls["ann"])
    for pair in pairs:
        expected = cohen_kappa_score([calls[pair.rater_a][i] for i in ids], [calls[pair.rater_b][i] for i in ids])
        assert pair.kappa == pytest.approx(expected)
    with pytest.raises(InputError, match="appears in both"):
        answers_by_rater([tmp_path / "ann.csv", _copy(tmp_path / "ann.csv", tmp_path / "ann2.csv")])


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def test_items_from_files(tmp_path):
    from nibabel.testing import data_path

    anat = Path(data_path) / "anatomical.nii"
    named = images_from_paths([anat])
    assert len(named) == 1 and named[0][0] == str(anat.resolve())
    items = build_items(named, [("gan", named[0][1][:2])])
    assert sum(i.truth == REAL for i in items) == named[0][1].shape[0]
    assert items[0].image().shape == named[0][1].shape[1:]
    with pytest.raises(InputError, match="does not exist"):
        images_from_paths([tmp_path / "missing.nii"])


def test_csv_rows_are_plain_csv(study, tmp_path):
    """The file opens in any spreadsheet: a header and one row per answer with the documented columns."""
    path = tmp_path / "ann.csv"
    session = ReaderSession(study, "ann", path)
    session.answer(SYNTHETIC)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and tuple(rows[0]) == CSV_FIELDS
    assert rows[0]["answer"] == SYNTHETIC and rows[0]["rater"] == "ann" and float(rows[0]["seconds"]) >= 0


@pytest.fixture(scope="module")
def mni_study_sources():
    """The 189 axial slices of the MNI152 template as real, 20 blurred noisy central slices as 'synthetic'."""
    from medsynth.data.samples import load_sample

    volume = np.asarray(load_sample("mni152").array, dtype=np.float32)
    rng = np.random.default_rng(1)
    fake = np.stack([ndimage.gaussian_filter(s, 1.5) + rng.normal(0, 3, s.shape) for s in volume[80:100]])
    return [("mni152", volume)], [("gan", fake)]


def test_near_empty_slices_are_left_out_by_the_rule_training_uses(mni_study_sources):
    from medsynth.data.datasets import SliceDataset
    from medsynth.data.normalization import percentile_normalization
    from medsynth.data.samples import load_sample

    real, fake = mni_study_sources
    items = build_items(real, fake, min_foreground=0.05)
    kept = [item.index for item in items if item.truth == REAL]
    mni = load_sample("mni152")
    dataset = SliceDataset([mni], percentile_normalization([mni.array]), 64, min_foreground=0.05)
    assert kept == [index[0] for _, index in dataset.items] and len(kept) == 137  # the air slices go
    assert 0 not in kept and 188 not in kept and 94 in kept
    assert len(build_items(real, fake)) == 189 + 20  # off by default


def test_balanced_trials_have_as_many_real_as_synthetic_items_and_repeat_with_the_seed(mni_study_sources, tmp_path):
    real, fake = mni_study_sources
    items = build_items(real, fake, min_foreground=0.05, balance=True, seed=7)
    truths = [item.truth for item in items]
    assert truths.count(REAL) == truths.count(SYNTHETIC) == 20
    assert [i.item_id for i in build_items(real, fake, min_foreground=0.05, balance=True, seed=7)] == [
        i.item_id for i in items
    ]
    other = build_items(real, fake, min_foreground=0.05, balance=True, seed=8)
    assert {i.item_id for i in other if i.truth == REAL} != {i.item_id for i in items if i.truth == REAL}
    # A rater who calls everything real is at chance on a balanced study.
    session = ReaderSession(items, "always-real", tmp_path / "a.csv", seed=7)
    while not session.done:
        session.answer(REAL)
    assert session.summary()["accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_foreground": 1.0}, "min_foreground 1.0 must be in [0, 1)"),
        ({"min_foreground": 0.99}, "every real image is nearly empty"),
    ],
)
def test_bad_study_options_are_refused(mni_study_sources, options, message):
    real, fake = mni_study_sources
    with pytest.raises(InputError, match=re.escape(message)):
        build_items(real, fake, **options)
