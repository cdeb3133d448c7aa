"""Peak memory, wall and CPU time of a `medsynth` command run in a child process, for the memory benchmarks.

`run_medsynth(argv, src)` runs ``medsynth.cli.main(argv)`` from the package under `src` (a folder holding
``medsynth/``, e.g. main's ``src`` extracted with ``git archive main src | tar -x -C /tmp/base``), or the
installed one, so that the code before and after a change runs in the same benchmark run. The peak
resident set size is the kernel's (``wait4``'s ``ru_maxrss``, which counts the pages of mapped files the
process touched). A child whose resident size passes `cap` bytes is killed, so that a command that
would take the machine's memory is reported as "above the cap" instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measurement:
    exit_code: int
    peak_rss: int
    """Bytes."""
    wall_s: float
    cpu_s: float
    capped: bool
    """Killed for passing the cap: the peak is at least the cap."""
    stderr_tail: str

    def describe(self) -> str:
        peak = f"{'>' if self.capped else ''}{self.peak_rss / 2**30:.2f} GiB"
        return f"peak RSS {peak}, wall {self.wall_s:.1f} s, CPU {self.cpu_s:.1f} s, exit {self.exit_code}"


def _resident(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_medsynth(argv: list[str], src: Path | None = None, cap: int = 8 * 2**30) -> Measurement:
    """Run ``medsynth argv`` in a child process and measure it; see the module docstring."""
    prelude = f"import sys; sys.path.insert(0, {str(src)!r}); " if src is not None else "import sys; "
    code = prelude + f"from medsynth.cli import main; sys.exit(main({argv!r}))"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    capped = threading.Event()

    def watch() -> None:
        while proc.poll() is None:
            if _resident(proc.pid) > cap:
                capped.set()
                proc.send_signal(signal.SIGKILL)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    watcher.join()
    return Measurement(
        exit_code=proc.returncode,
        peak_rss=usage.ru_maxrss * 1024,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        capped=capped.is_set(),
        stderr_tail=stderr[-600:],
    )
