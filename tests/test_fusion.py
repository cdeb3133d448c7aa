"""kgan-fusion: the fusion figures (SF, SSIM to each source, SCD), the fusion generator and its recipe, on the
MNI152 T1 with its own grey-matter map as a co-registered pair (domain A: T1, domain B: GM)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from medsynth.cli import main
from medsynth.data.samples import load_sample
from medsynth.errors import InputError
from medsynth.io import SyntheticProvenance, write_nifti
from medsynth.metrics import evaluate_fusion

AXIAL = slice(70, 110, 8)
"""Five axial slices through the middle of the brain, where the grey-matter map has structure."""


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """Axial slices ``(5, 233, 197)`` of the T1 template (0-255) and of its grey-matter map (0-255)."""
    t1, gm = (np.asarray(load_sample(name).array[AXIAL], dtype=np.float64) for name in ("mni152", "mni152_gm"))
    return t1, gm


def _figures(fused, a, b, **kwargs) -> dict[str, np.ndarray]:
    return {r.name: np.asarray(r.values) for r in evaluate_fusion(fused, a, b, **kwargs)}


# The fusion figures ---------------------------------------------------------------------------------


def test_fusion_figures_of_hand_computed_ramps():
    """A = a column ramp, B = a row ramp (uncorrelated, equal spread), fused = A: every figure follows by hand."""
    ramp = np.tile(np.arange(12.0), (12, 1))
    a, b = ramp[None], ramp.T[None]
    figures = _figures(a, a, b, range_a=(0, 11), range_b=(0, 11))
    assert list(figures) == ["sf", "ssim_a", "ssim_b", "ssim", "scd"]
    # 12 rows of 11 steps of 255/11 on the 0-255 scale, over 144 pixels; no change down the columns.
    assert figures["sf"][0] == pytest.approx(255 / 11 * math.sqrt(132 / 144))
    assert figures["ssim_a"][0] == pytest.approx(1.0)
    assert figures["ssim"][0] == pytest.approx((1.0 + figures["ssim_b"][0]) / 2)
    # corr(A - B, A) = sd(A) / sd(A - B) = 1 / sqrt(2); F - A = 0 has no correlation and counts 0.
    assert figures["scd"][0] == pytest.approx(1 / math.sqrt(2))


def test_fusion_figures_rank_real_fusions(pair):
    t1, gm = pair
    gm_in_t1_units = gm / gm.max() * t1.max()  # both sources span 0..max, so this is B on A's scale
    average = (t1 + gm_in_t1_units) / 2
    alone, mixed = _figures(t1, t1, gm), _figures(average, t1, gm)
    blurred = _figures(ndimage.gaussian_filter(average, (0, 2, 2)), t1, gm)
    assert np.all(mixed["scd"] > alone["scd"] + 0.2)  # the average carries B; A alone carries none of it
    assert np.all(mixed["ssim_b"] > alone["ssim_b"])
    np.testing.assert_allclose(alone["ssim_a"], 1.0)
    assert np.all(blurred["sf"] < 0.7 * mixed["sf"])  # blurring removes the fine detail SF measures
    assert np.all(blurred["ssim"] < mixed["ssim"])


def test_fusion_figures_refuse_bad_input(pair):
    t1, gm = pair
    with pytest.raises(InputError, match="one grid"):
        evaluate_fusion(t1, t1, gm[:, :, :-1])
    with pytest.raises(InputError, match="range_b"):
        evaluate_fusion(t1, t1, np.zeros_like(gm))
    with pytest.raises(InputError, match="NaN"):
        evaluate_fusion(np.full_like(t1, np.nan), t1, gm)


@pytest.fixture(scope="module")
def pair_files(pair, tmp_path_factory):
    """The T1 and GM slices as NIfTI volumes on the template's grid, and their average labelled synthetic."""
    folder = tmp_path_factory.mktemp("pair")
    t1, gm = pair
    template = load_sample("mni152")
    as_file = lambda array, name, **kw: write_nifti(  # noqa: E731
        template.with_array(array.astype(np.float32), **kw), folder / f"{name}.nii.gz"
    )
    average = (t1 + gm / gm.max() * t1.max()) / 2
    provenance = SyntheticProvenance("average", "0", seed=0)
    return as_file(t1, "t1"), as_file(gm, "gm"), as_file(average, "fused", synthetic=provenance)


def test_cli_fusion_figures_match_the_library(pair, pair_files, tmp_path, capsys):
    t1_path, gm_path, fused_path = map(str, pair_files)
    out = tmp_path / "fusion.json"
    args = ["evaluate", "--fused", fused_path, "--sources", t1_path, gm_path, "--slices", "--json", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["sf", "ssim_a", "ssim_b", "ssim", "scd"]
    doc = json.loads(out.read_text())
    assert set(doc["definitions"]) == {"sf", "ssim_a", "ssim_b", "ssim", "scd"}
    t1, gm = pair
    expected = _figures((t1 + gm / gm.max() * t1.max()) / 2, t1, gm)
    for row in doc["results"]:
        assert row["n"] == 5
        np.testing.assert_allclose(row["values"], expected[row["name"]], rtol=1e-5)
    assert main(["evaluate", "--metrics", "list"]) == 0
    assert "--fused" in capsys.readouterr().out


def test_cli_fusion_bad_input_exits_2(pair_files, tmp_path, capsys):
    from nibabel.testing import data_path

    t1_path, gm_path, fused_path = map(str, pair_files)
    cases = {
        "--sources": ["--fused", fused_path],
        "leave out --metrics": ["--fused", fused_path, "--sources", t1_path, gm_path, "--metrics", "psnr"],
        "leave out --real": ["--fused", fused_path, "--sources", t1_path, gm_path, "--real", t1_path],
        "one grid": ["--fused", fused_path, "--sources", t1_path, str(data_path / "anatomical.nii")],
    }
    for message, extra in cases.items():
        assert main(["evaluate", *extra]) == 2
        assert message in capsys.readouterr().err
