"""What each step leaves in DIR/steps/: NAME.json, written by a Python step after every entry
(StepRecorder, so a step killed half way keeps what it measured), and NAME.run.json, the shell's
record of a step it ran or skipped (exit code, timeout, JUnit counts, memcheck's summaries).
Also the JSON helpers every file of the check is written and read with."""

from __future__ import annotations

import json
import math
import os
import re
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

STEPS = ("build", "tests", "sanitizer", "kernels", "leverage", "extraction")
STATUSES = ("ok", "failed", "skipped")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_json(path: Path, data) -> None:
    """Written to a temporary file and renamed: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(obj):
    return obj.item() if hasattr(obj, "item") else str(obj)  # numpy / torch scalars; paths and the rest as text


def read_json(path: Path):
    """The file's data, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finite(x):
    """JSON has no NaN / inf: None instead."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def ratio(num, den):
    return finite(num / den) if num is not None and den else None


def step_entries(step: dict) -> list:
    return [e for e in step.get("entries", []) if isinstance(e, dict)]


class StepRecorder:
    """DIR/steps/NAME.json, rewritten after every entry."""

    def __init__(self, out: Path, name: str, mode: str):
        self.path = out / "steps" / f"{name}.json"
        self.data = {"step": name, "mode": mode, "status": "running", "entries": [], "info": {}, "started": now()}
        self.t0 = time.perf_counter()
        self.flush()

    def flush(self) -> None:
        self.data["seconds"] = round(time.perf_counter() - self.t0, 3)
        write_json(self.path, self.data)

    def info(self, **kw) -> None:
        self.data["info"].update(kw)
        self.flush()

    def entry(self, name: str, fn) -> dict | None:
        """Run fn() -> dict and keep it as an entry; an exception is kept as a failed entry and
        the step goes on with its next entry."""
        t0 = time.perf_counter()
        print(f"[{self.data['step']}] {name} ...", flush=True)
        try:
            result = {"name": name, "status": "ok", **fn()}
        except Exception as exc:  # one failing entry must not hide the others' numbers
            traceback.print_exc()
            result = {"name": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        result["seconds"] = round(time.perf_counter() - t0, 3)
        self.data["entries"].append(result)
        self.flush()
        print(f"[{self.data['step']}] {name}: {result['status']} ({result['seconds']:.1f} s)", flush=True)
        return result

    def fail_setup(self, exc: Exception) -> None:
        """The step could not run its entries (e.g. no GPU): failed, with its reason."""
        self.data["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        self.data["entries"].append({"name": "setup", "status": "failed", "error": self.data["error"]})

    def finish(self) -> int:
        failed = [e["name"] for e in self.data["entries"] if e["status"] != "ok"]
        self.data["status"] = "failed" if failed else "ok"
        if failed:
            self.data["failed_entries"] = failed
        self.flush()
        return 1 if failed else 0


def write_shell_record(
    out: Path, name: str, status: str, *, seconds=None, rc=None, timeout=None, detail=None, log=None, command=None, junit=None
) -> None:
    """The shell's record of a step: DIR/steps/NAME.run.json (`log` and `junit` relative to `out`)."""
    data = {
        "step": name,
        "status": status,
        "seconds": seconds,
        "rc": rc,
        "timeout_s": timeout,
        "detail": detail,
        "log": log,
        "command": command,
    }
    if junit:  # test counts from pytest's JUnit XML files
        data["junit"] = junit
        data["counts"] = junit_counts([out / j for j in junit])
    if log and name == "sanitizer":
        data.update(sanitizer_summary(out / log))
    write_json(out / "steps" / f"{name}.run.json", {k: v for k, v in data.items() if v is not None})


def junit_counts(paths) -> dict:
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            counts.setdefault("unreadable", []).append(str(path.name))
            continue
        for suite in [root] if root.tag == "testsuite" else root.iter("testsuite"):
            for key in ("tests", "failures", "errors", "skipped"):
                counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def sanitizer_summary(log: Path) -> dict:
    """compute-sanitizer's 'ERROR SUMMARY: N errors' lines (one per process it watched)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {}
    found = [int(m) for m in re.findall(r"ERROR SUMMARY: (\d+) error", text)]
    return {"sanitizer_error_summaries": found, "sanitizer_errors": sum(found)} if found else {}
