"""The Python half of benchmarks/gpu_check.sh: kernel timings, the whole scoring
engine, end-to-end extraction on a LLaVA-1.5-7B-shaped model, and the report.

    python benchmarks/gpu_check step {kernels,leverage,extraction} --out DIR --mode {full,quick,dry}
    python benchmarks/gpu_check record --out DIR --name NAME --status ok ...  (used by the .sh)
    python benchmarks/gpu_check report --out DIR --mode MODE

Each `step` runs in its own process (the shell gives it a timeout) and writes
DIR/steps/NAME.json after every entry, so a step killed half way keeps what it measured.
Mode "dry" (`gpu_check.sh --cpu-dry-run`) runs the very same functions on the CPU with tiny
tensors, and builds the full-size LLaVA-1.5-7B on the meta device only.

torch is imported inside the steps, so `record` and `report` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

if not __package__:  # run as a folder: import the package from benchmarks/, not its modules from its own folder
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0]).resolve() == _here:
        del sys.path[0]
    sys.path.insert(0, str(_here.parent))

from gpu_check.machine import machine_facts  # noqa: E402
from gpu_check.record import STATUSES, STEPS, StepRecorder, write_json, write_shell_record  # noqa: E402
from gpu_check.report import build_report, print_table  # noqa: E402
from gpu_check.sizes import MODES  # noqa: E402

PYTHON_STEPS = ("kernels", "leverage", "extraction")  # each a module of this package with entries(rec, mode)


def cmd_step(args) -> int:
    rec = StepRecorder(Path(args.out), args.name, args.mode)
    rec.info(machine=machine_facts())  # the report takes it from here (no torch import there)
    try:
        # imported here, torch and scalselect with it: a broken import fails this step, with its reason
        importlib.import_module(f"gpu_check.{args.name}").entries(rec, args.mode)
    except Exception as exc:  # e.g. no GPU: the step fails, with its reason
        traceback.print_exc()
        rec.fail_setup(exc)
    return rec.finish()


def cmd_record(args) -> int:
    """The shell's record of a step it ran (or skipped): DIR/steps/NAME.run.json."""
    write_shell_record(
        Path(args.out),
        args.name,
        args.status,
        seconds=args.seconds,
        rc=args.rc,
        timeout=args.timeout,
        detail=args.detail,
        log=args.log,
        command=args.command,
        junit=args.junit,
    )
    return 0


def cmd_report(args) -> int:
    out = Path(args.out)
    report = build_report(out, args.mode)
    write_json(out / "report.json", report)
    print_table(report, out)
    return 1 if report["failed_steps"] else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("step")
    p.add_argument("name", choices=PYTHON_STEPS)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=MODES, required=True)
    p = sub.add_parser("record")
    p.add_argument("--out", required=True)
    p.add_argument("--name", choices=STEPS, required=True)
    p.add_argument("--status", choices=STATUSES, required=True)
    p.add_argument("--seconds", type=float)
    p.add_argument("--rc", type=int)
    p.add_argument("--timeout", type=int)
    p.add_argument("--detail")
    p.add_argument("--log")
    p.add_argument("--command")
    p.add_argument("--junit", action="append")
    p = sub.add_parser("report")
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=MODES, required=True)
    args = parser.parse_args(argv)
    return {"step": cmd_step, "record": cmd_record, "report": cmd_report}[args.action](args)


if __name__ == "__main__":
    sys.exit(main())
