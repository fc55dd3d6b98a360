"""Runs one child process and measures it alone: wall time and that child's own peak RSS
(os.wait4; RUSAGE_CHILDREN would be the largest over every child the script ever ran)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time


def timed(argv: list[str]) -> dict:
    """{"wall_s", "peak_mib", "stdout"} of one child; RuntimeError with its stderr's tail if it fails.
    Its output goes to files, so a chatty child never blocks on a full pipe."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{argv[:4]} failed: {err.read()[-2000:]}")
        return {"wall_s": wall, "peak_mib": usage.ru_maxrss / 1024, "stdout": out.read()}
