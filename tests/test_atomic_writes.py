"""Nothing lost and nothing left behind: writes interrupted by signals, stale temporaries, output clashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medsynth.atomic import TEMP_SUFFIX, atomic_path, remove_stale_temporaries, staged_folder, write_text
from medsynth.cli import main
from medsynth.data.samples import sample_path
from medsynth.errors import InputError
from medsynth.io import read
from medsynth.training.checkpoint import load_checkpoint

# A generator wide enough that each checkpoint is about 18 MB, so that most of a run is spent writing.
WIDE_DCGAN = ["--set", "g_channels=32", "--set", "d_channels=8", "--set", "batch_size=2"]
TINY = ["--set", "batch_size=4", "--set", "g_channels=8", "--set", "d_channels=8", "--set", "latent_dim=16"]


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f".*{TEMP_SUFFIX}"))


def _checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints anywhere under `out` (a run may keep them in a folder of its own)."""
    return sorted(out.rglob("checkpoint-*.safetensors"))


def test_a_temporary_is_hidden_and_ends_in_no_image_suffix(tmp_path):
    with atomic_path(tmp_path / "labels.nii.gz") as tmp:
        tmp.write_bytes(b"half")
        assert tmp.name.startswith(".labels.nii.gz.") and tmp.name.endswith(TEMP_SUFFIX)
        assert not tmp.name.endswith((".nii.gz", ".nii", ".dcm", ".safetensors"))
        with pytest.raises(InputError, match="holds no DICOM images"):
            read(tmp_path)  # a folder reader sees no data in it
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]


def _start_training(out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "medsynth", "train", "--recipe", "dcgan", "--data", str(sample_path("ct_slice"))]
    command += ["--out", str(out), "--steps", "100000", "--checkpoint-every", "1", *WIDE_DCGAN]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_a_write(process: subprocess.Popen, out: Path) -> None:
    """Return as soon as a checkpoint is being written (its temporary exists) after a first one was complete."""
    deadline = time.monotonic() + 300
    while not (out.is_dir() and _checkpoints(out) and _temporaries(out)):
        assert process.poll() is None, f"training ended before its first checkpoint:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint write within 5 minutes"
        time.sleep(0.002)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "SIGTERM"])
def test_a_signal_during_a_checkpoint_write_never_leaves_a_corrupt_checkpoint(tmp_path, sig):
    out = tmp_path / "run"
    process = _start_training(out)
    try:
        _wait_for_a_write(process, out)
        process.send_signal(sig)
        output, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    if sig == signal.SIGTERM:
        # The documented clean stop: the write under way completes, then a last checkpoint.
        assert process.returncode == 0, output
        assert "stopping after this step" in output
        assert _temporaries(out) == []
    else:
        assert process.returncode == -signal.SIGKILL
    checkpoints = _checkpoints(out)
    assert checkpoints, "no complete checkpoint"
    for path in checkpoints:
        load_checkpoint(path)  # complete, hash verified
    assert not [p for p in out.rglob("*") if p.name.endswith(".safetensors") and p not in checkpoints]
    assert not [p for p in out.rglob(".*") if not p.name.endswith(TEMP_SUFFIX)]

    # The next run writing into the folder clears what a killed one left there, and nothing else.
    folder = checkpoints[0].parent
    next_run = f"from medsynth.atomic import write_text; write_text({str(folder / 'notes.txt')!r}, 'next run')"
    subprocess.run([sys.executable, "-c", next_run], check=True, timeout=120)
    assert _temporaries(out) == []
    assert _checkpoints(out) == checkpoints
    assert (folder / "notes.txt").read_text() == "next run"


def test_only_our_own_temporaries_of_dead_processes_are_removed(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    stale = tmp_path / f".scan.nii.gz.{dead_pid}-abc123{TEMP_SUFFIX}"
    stale_folder = tmp_path / f".out.{dead_pid}-def456{TEMP_SUFFIX}"
    live = tmp_path / f".ckpt.safetensors.{os.getpid()}-0a1b2c{TEMP_SUFFIX}"
    foreign = [tmp_path / ".scan.nii.gz.x1y2z3.nii.gz", tmp_path / "my.medsynth-tmp", tmp_path / f".notes{TEMP_SUFFIX}"]
    for path in (stale, live, *foreign):
        path.write_bytes(b"x")
    stale_folder.mkdir()
    (stale_folder / "IM0001.dcm").write_bytes(b"x")
    old = time.time() - 3600
    for path in (stale, stale_folder, live, *foreign):
        os.utime(path, (old, old))

    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale, stale_folder])
    assert sorted(tmp_path.iterdir()) == sorted([live, *foreign])


def test_a_staged_folder_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "series"
    with staged_folder(out) as stage:
        for name in ("a.dcm", "b.dcm"):
            write_text(stage / name, name)
    assert sorted(p.name for p in out.iterdir()) == ["a.dcm", "b.dcm"]
    assert out.stat().st_mode & 0o777 == 0o755

    with pytest.raises(InputError, match=r"1 of the 2 files to write exist already in .*series, e\.g\. b\.dcm.*never"):
        with staged_folder(out) as stage:
            write_text(stage / "c.dcm", "new")
            write_text(stage / "b.dcm", "new")
    assert sorted(p.name for p in out.iterdir()) == ["a.dcm", "b.dcm"]
    assert (out / "b.dcm").read_text() == "b.dcm"

    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "failed") as stage:
            write_text(stage / "a.dcm", "a")
            raise RuntimeError("generation failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_generate_into_a_folder_holding_part_of_an_earlier_output_writes_nothing(tmp_path, capsys):
    volume = tmp_path / "ct.nii.gz"
    from medsynth.io import read_image, write_nifti

    write_nifti(read_image(sample_path("ct_slice")), volume)
    runs = tmp_path / "runs"
    argv = ["train", "--recipe", "dcgan", "--data", str(volume), "--out", str(runs), "--name", "tiny", "--steps", "1"]
    assert main([*argv, *TINY]) == 0
    checkpoint = str(runs / "tiny" / "checkpoint-0000001.safetensors")
    folder = tmp_path / "dicom"
    assert main(["generate", checkpoint, "-n", "3", "--out", str(folder)]) == 0
    first = sorted(folder.iterdir())
    assert len(first) == 3
    (first[0]).unlink()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    # Refused before the model is loaded; a clash found while moving staged files would be too (staged_folder).
    assert main(["generate", checkpoint, "-n", "3", "--out", str(folder)]) == 2
    assert "holds DICOM files already; choose a new or empty folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize("name", ["x.nii.gzz", "x.png", "x.dcm", "out.v2"])
def test_generate_refuses_an_unknown_output_suffix_before_any_work(tmp_path, capsys, name):
    missing_checkpoint = tmp_path / "never-read.safetensors"
    assert main(["generate", str(missing_checkpoint), "-n", "1", "--out", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert f"unknown output type '{Path(name).suffix}'" in err and ".nii or .nii.gz" in err and "folder" in err
    assert sorted(tmp_path.iterdir()) == []
