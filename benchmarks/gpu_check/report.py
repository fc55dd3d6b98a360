"""The report: every step's files joined into DIR/report.json (schema SCHEMA), with the
machine, the time bound and the targets, and the short table printed last."""

from __future__ import annotations

import time
from pathlib import Path

from .machine import machine_facts
from .record import STEPS, finite, now, read_json, step_entries
from .targets import targets

SCHEMA = "scalselect-gpu-check/1"


def join_steps(out: Path) -> dict:
    """Per step, the Python side's NAME.json under the shell's NAME.run.json."""
    steps = {}
    for name in STEPS:
        run = read_json(out / "steps" / f"{name}.run.json")
        body = read_json(out / "steps" / f"{name}.json")
        if run is None and body is None:
            steps[name] = {"status": "failed", "detail": "never ran (the script stopped before it?)"}
            continue
        step = dict(body or {})
        step.pop("step", None)
        if run:  # the shell's view (exit code, timeout) decides; the Python side adds its numbers
            step.update({k: v for k, v in run.items() if k != "step"})
            if body and body.get("status") == "failed" and run["status"] == "ok":
                step["status"] = "failed"
            if body and body.get("status") == "running":
                step["detail"] = (run.get("detail") or "") + "; stopped before its last entry"
        steps[name] = step
    return steps


def build_report(out: Path, mode: str) -> dict:
    steps = join_steps(out)
    started = read_json(out / "started.json") or {}
    machine = next((st["info"]["machine"] for st in steps.values() if st.get("info", {}).get("machine")), None)
    for st in steps.values():
        st.get("info", {}).pop("machine", None)
    report = {
        "schema": SCHEMA,
        "mode": mode,
        "started": started.get("started"),
        "finished": now(),
        "total_s": finite(time.time() - started["epoch"]) if "epoch" in started else None,
        "time_bound_s": started.get("bound_s"),
        "command": started.get("command"),
        "machine": machine or machine_facts(),
        "steps": steps,
    }
    report["targets"] = targets(steps, evaluate=mode != "dry")
    report["failed_steps"] = [n for n, st in steps.items() if st.get("status") == "failed"]
    return report


def _fmt(x, unit="", digits=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.2e}{unit}"
        return f"{x:.{digits}g}{unit}"
    return f"{x}{unit}"


def print_table(report: dict, out: Path) -> None:
    lines = ["", f"scalselect GPU check ({report['mode']}): {out / 'report.json'}"]
    m = report["machine"]
    gpu = m.get("gpu", {}).get("name", "no GPU")
    build = m.get("scalselect", {}).get("build", {})
    lines.append(
        f"machine: {gpu}; torch {m.get('torch')}; scalselect cuda={build.get('cuda')} "
        f"archs={build.get('cuda_archs') or '-'}; total {_fmt(report.get('total_s'), ' s')} "
        f"(bound {report.get('time_bound_s')} s)"
    )
    lines.append(f"{'step':<11} {'status':<8} {'seconds':>8}  detail")
    for name, st in report["steps"].items():
        detail = st.get("detail") or ""
        if "counts" in st:
            c = st["counts"]
            detail = (
                f"{c.get('passed')} passed, {c.get('failures')} failed, {c.get('errors')} errors, "
                f"{c.get('skipped')} skipped; " + detail
            )
        if st.get("failed_entries"):
            detail = f"failed: {', '.join(st['failed_entries'])}; " + detail
        lines.append(f"{name:<11} {st.get('status', '?'):<8} {_fmt(st.get('seconds'), digits=4):>8}  {detail[:90]}")
    kern = [e for e in step_entries(report["steps"].get("kernels", {})) if "kernel" in e or e["status"] != "ok"]
    if kern:
        lines += ["", f"{'kernel':<28} {'native':>10} {'twin':>10} {'twin/nat':>9} {'max abs err':>12} {'max rel err':>12}"]
        for e in kern:
            lines.append(
                f"{e['name']:<28} {_fmt(e.get('native_s'), ' s'):>10} {_fmt(e.get('twin_s'), ' s'):>10} "
                f"{_fmt(e.get('ratio'), 'x'):>9} {_fmt(e.get('max_abs_err')):>12} "
                f"{_fmt(e.get('max_rel_err')):>12}" + ("" if e["status"] == "ok" else "  FAILED")
            )
    lev = {e["name"]: e for e in step_entries(report["steps"].get("leverage", {}))}
    if "scalselect" in lev or "scalselect_twins" in lev:
        lines.append("")
        for name in ("scalselect", "scalselect_twins"):
            e = lev.get(name)
            if e and e["status"] == "ok":
                t = e.get("timings_s", {})
                lines.append(
                    f"leverage_scores {name:<17} {e['rows']} rows: {_fmt(e['wall_s'], ' s')} (Gram pass "
                    f"{_fmt(t.get('gram_pass'), ' s')}, eigen {_fmt(t.get('eigen'), ' s')}, score pass "
                    f"{_fmt(t.get('score_pass'), ' s')}), k={e['k']}"
                )
            elif e:
                lines.append(f"leverage_scores {name:<17} FAILED: {e.get('error', '')[:80]}")
        if "torch_xtx" in lev and lev["torch_xtx"]["status"] == "ok":
            lines.append(f"one float32 X^T X of the same matrix: {_fmt(lev['torch_xtx'].get('xtx_s'), ' s')}")
    ex = report["steps"].get("extraction", {})
    exe = {e["name"]: e for e in step_entries(ex)}
    if exe:
        lines.append("")
        meta = exe.get("meta_model_llava_1_5_7b", {})
        if meta.get("status") == "ok":
            lines.append(
                f"meta-device LLaVA-1.5-7B: {meta['parameters_billion']} B parameters, "
                f"{meta['decoder_layers']} decoder layers, {meta['vision_layers']} vision layers"
            )
        for name in ("scalselect", "scalselect_twins", "reference"):
            e = exe.get(name)
            if e and e["status"] == "ok":
                lines.append(
                    f"extraction {name:<17} {e['samples']:>4} samples, batch {e['batch_size']:>2}: "
                    f"{_fmt(e['samples_per_s'], ' samples/s')}"
                )
            elif e:
                lines.append(f"extraction {name:<17} FAILED: {e.get('error', '')[:80]}")
        info = ex.get("info", {})
        if info.get("ratio_ours_over_reference") is not None:
            lines.append(f"extraction: scalselect / reference way = {_fmt(info['ratio_ours_over_reference'], 'x')}")
    dry = report["mode"] == "dry"
    lines += ["", "targets (to be met on an H200)" + (": not evaluated in a dry run" if dry else ":")]
    for t in report["targets"]:
        met = "dry run" if dry else {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"  {t['target']:<58} {_fmt(t['value']):>10}  {met}")
    if report["failed_steps"]:
        lines.append(f"FAILED steps: {', '.join(report['failed_steps'])} (logs in {out / 'logs'})")
    print("\n".join(lines), flush=True)
