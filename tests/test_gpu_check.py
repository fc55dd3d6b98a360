"""benchmarks/gpu_check.sh in its --cpu-dry-run mode: every step it can run without a
GPU runs, through the same code that times the kernels and the extraction on a GPU, and the
report has the structure the GPU run will fill in."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["build", "tests", "sanitizer", "kernels", "leverage", "extraction"]
KERNELS = {"attention_mass", "top_mass_mean", "gram_prep", "projected_sqnorm"}


def _run(*args, timeout=300):
    env = {**os.environ, "PYTHON": sys.executable}  # the interpreter running these tests
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    proc = _run("--cpu-dry-run", "--out", str(out))
    assert (out / "report.json").is_file(), proc.stdout + proc.stderr
    return proc, out, json.loads((out / "report.json").read_text())


def _entries(report, step):
    return {e["name"]: e for e in report["steps"][step]["entries"]}


def test_every_step_reports_a_status_and_the_table_comes_last(dry_run):
    proc, out, report = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["schema"] == "scalselect-gpu-check/1" and report["mode"] == "dry"
    assert list(report["steps"]) == STEPS
    for name, step in report["steps"].items():
        assert step["status"] in ("ok", "failed", "skipped"), name
        assert isinstance(step.get("seconds"), (int, float)), name
        assert step.get("detail"), name
    assert report["failed_steps"] == []
    steps = report["steps"]
    # dry run: the build is a no-op that checks the tools, the sanitizer needs a GPU
    assert steps["build"]["status"] == "skipped" and "dry run" in steps["build"]["detail"]
    assert "cmake" in (out / "logs" / "build.log").read_text()
    assert steps["sanitizer"]["status"] == "skipped"
    # the tests step ran pytest and its JUnit file was read
    counts = steps["tests"]["counts"]
    assert steps["tests"]["status"] == "ok" and counts["failures"] == counts["errors"] == 0
    assert counts["tests"] > 0
    for name in ("kernels", "leverage", "extraction"):
        assert steps[name]["status"] == "ok", steps[name]
        assert steps[name]["timeout_s"] > 0
    assert report["machine"]["scalselect"]["build"]["native"]
    assert report["total_s"] > 0 and report["time_bound_s"] > 0
    # the table is printed last, after every step's progress line
    start = proc.stdout.index("scalselect GPU check (dry):")
    assert proc.stdout.rindex("[extraction]") < start
    table = proc.stdout[start:]
    assert str(out / "report.json") in table and "targets" in table and "twin/nat" in table
    assert "Gram + projection" in table.strip().splitlines()[-1]


def test_the_llava_7b_shape_is_built_on_the_meta_device(dry_run):
    meta = _entries(dry_run[2], "extraction")["meta_model_llava_1_5_7b"]
    assert meta["status"] == "ok"
    assert 6.9e9 < meta["parameters"] < 7.2e9  # LLaVA-1.5-7B: 7.06 B
    assert meta["decoder_layers"] == 32 and meta["vision_layers"] == 24 and meta["hidden_size"] == 4096
    assert meta["devices"] == ["meta"] and meta["dtypes"] == ["bfloat16"]


def test_every_kernel_entry_has_errors_and_a_speed_ratio(dry_run):
    entries = [e for e in dry_run[2]["steps"]["kernels"]["entries"] if "kernel" in e]
    assert {e["kernel"] for e in entries} == KERNELS
    assert {e["dtype"] for e in entries if e["kernel"] == "attention_mass"} == {"bfloat16", "float16"}
    for e in entries:
        assert e["status"] == "ok", e
        for key in ("native_s", "twin_s", "ratio", "max_abs_err", "max_rel_err"):
            assert isinstance(e[key], float) and e[key] >= 0, (e["name"], key)
        # a canary for a gross error in the report; the kernels' own tests hold the derived bounds
        assert e["ratio"] > 0 and e["max_rel_err"] < 1e-3, e
    tops = [e for e in entries if e["kernel"] == "top_mass_mean"]
    assert all(e["kept_equal"] for e in tops)
    targets = [t["target"] for t in dry_run[2]["targets"]]
    assert sum("its twin" in t for t in targets) == len(entries)


def test_the_engine_and_extraction_entries(dry_run):
    lev = _entries(dry_run[2], "leverage")
    assert lev["scalselect"]["gram_plus_projection_s"] > 0 and lev["scalselect"]["k"] >= 1
    assert lev["scalselect_twins"]["k_equal"]
    assert lev["scalselect_twins"]["scores_max_rel_diff_vs_native"] < 1e-4
    ex = dry_run[2]["steps"]["extraction"]
    runs = _entries(dry_run[2], "extraction")
    for name in ("scalselect", "scalselect_twins", "reference"):
        assert runs[name]["status"] == "ok" and runs[name]["samples_per_s"] > 0
    assert runs["reference"]["min_cosine_vs_ours"] > 0.999
    assert ex["info"]["ratio_ours_over_reference"] > 0
    assert all(t["met"] is None for t in dry_run[2]["targets"])  # a dry run judges no target


def test_record_and_report_start_without_torch(dry_run, tmp_path):
    """The shell runs them after every step and when it is stopped: they import neither torch
    nor numpy (the machine facts come from the steps' files)."""
    shutil.copytree(dry_run[1], tmp_path / "run")
    check = ROOT / "benchmarks" / "gpu_check"
    for args in (
        ["record", "--out", str(tmp_path / "rec"), "--name", "build", "--status", "skipped", "--detail", "x"],
        ["report", "--out", str(tmp_path / "run"), "--mode", "dry"],
    ):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", str(check), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONSAFEPATH": "1"},
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        assert imported and not imported & {"torch", "numpy"}, args[0]
    assert json.loads((tmp_path / "rec" / "steps" / "build.run.json").read_text())["status"] == "skipped"
    assert "scalselect GPU check (dry):" in proc.stdout


def test_bad_arguments_are_refused():
    proc = _run("--fast", timeout=60)
    assert proc.returncode == 2 and "unknown argument" in proc.stderr
    proc = _run("--out", timeout=60)
    assert proc.returncode == 2 and "--out needs a directory" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_only_the_dry_run_starts(tmp_path):
    proc = _run("--quick", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and "--cpu-dry-run" in proc.stderr
    assert not (tmp_path / "report.json").exists()
