"""The DTCR ablation-curve benchmark, in small: train both arms on the real cine, resume, evaluate every checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--resolution", "32", "--checkpoint-every", "2", "--stage-steps", "1", "--ramp-steps", "4",
        "--log-every", "1", "--sequences", "2", "--seeds", "0"]  # fmt: skip


@pytest.fixture
def curve(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_dtcr_curve

    return bench_dtcr_curve


def logged(folder: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines()) if r["event"] == event]


def test_ablation_curve_trains_both_arms_resumes_and_evaluates_every_checkpoint(curve, tmp_path, capsys):
    curve.main(["--workdir", str(tmp_path), "--steps", "4", *TINY])
    report = capsys.readouterr().out

    on, off = tmp_path / "on-seed0", tmp_path / "off-seed0"
    for folder in (on, off):
        assert [r["step"] for r in logged(folder, "checkpoint")] == [2, 4]
        assert all((folder / r["checkpoint"]).exists() for r in logged(folder, "checkpoint"))
        cpu = [r["cpu_s"] for r in logged(folder, "checkpoint")]
        assert 0 < cpu[0] < cpu[1]
        evaluation = json.loads((folder / "evaluation.json").read_text())
        assert sorted(evaluation) == ["checkpoint-0000002.safetensors n=2", "checkpoint-0000004.safetensors n=2"]
        for metrics in evaluation.values():
            assert metrics["warp_error_real"] > 0 and metrics["mean_abs_diff_fake"] > 0
            assert all(math.isfinite(v) for v in metrics.values())
            assert 0 < metrics["V"] <= 1
            assert metrics["dtcr_grad_share"] > 0  # also for "off": what lambda * DTCR would add to the gradient
    # The arms differ only in DTCR: the "on" run's generator loss holds a weighted DTCR term, "off" none.
    on_losses = [r["losses"] for r in logged(on, "progress")]
    off_losses = [r["losses"] for r in logged(off, "progress")]
    assert all(loss["dtcr"] > 0 and loss["dtcr_weight"] >= 0.1 for loss in on_losses)
    assert all(loss["dtcr"] == 0 and loss["dtcr_weight"] == 0 for loss in off_losses)
    for step in (2, 4):
        assert sum(line.startswith(f"| {step} | ") for line in report.splitlines()) == 3  # 2 runs + on/off ratios
    assert "Verdict" in report

    # A higher budget resumes the run from its last checkpoint; evaluation (its settings read from the
    # checkpoints) adds only the new checkpoint and compares the arms at the steps both have.
    before = json.loads((off / "evaluation.json").read_text())
    curve.main(["--workdir", str(tmp_path), "--steps", "6", "--arms", "off", "--train-only", *TINY])
    assert [r["step"] for r in logged(off, "start")] == [0, 4]
    checkpoints = logged(off, "checkpoint")
    assert [r["step"] for r in checkpoints] == [2, 4, 6] and checkpoints[2]["cpu_s"] > checkpoints[1]["cpu_s"]
    capsys.readouterr()
    curve.main(["--workdir", str(tmp_path), "--evaluate-only", "--seeds", "0", "--sequences", "2"])
    after = json.loads((off / "evaluation.json").read_text())
    assert {k: after[k] for k in before} == before and len(after) == 3
    report = capsys.readouterr().out
    assert "| 6 | off | 0 |" in report and not any(line.startswith("| 6 | ") and "| on |" in line for line in report.splitlines())


def test_verdict_uses_grown_checkpoints_only(curve):
    settings = {"resolution": 64, "base_resolution": 16, "stage_steps": 10, "fade_steps": 5}  # 16 -> 32 -> 64
    # stage 0: steps 0-9; 32 px fades in over 10-14, trains 15-24; 64 px fades in over 25-29
    assert [step for step in range(0, 50, 5) if curve.grown(step, settings)] == [30, 35, 40, 45]


def test_verdict_needs_a_flickering_baseline(curve):
    assert "not testable" in curve.verdict([])
    flicker_removed = {"warp_error_fake": 0.6, "swd": 1.05}
    assert "CONFIRMED" in curve.verdict([flicker_removed])
    assert "REFUTED" in curve.verdict([{**flicker_removed, "swd": 1.2}])
    assert "REFUTED" in curve.verdict([{**flicker_removed, "warp_error_fake": 0.95}])


def test_a_budget_is_required(curve, tmp_path, capsys):
    with pytest.raises(SystemExit):
        curve.parse_args(["--workdir", str(tmp_path)])
    assert "--steps N and/or --cpu-seconds S" in capsys.readouterr().err
