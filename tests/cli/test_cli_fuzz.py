"""The command line against generated hostile input: pools, scores files, share tables, stores and
option values thrown at score, select, compare and info. Whatever comes in, a command ends with
exit 0 and a valid result, or exit 2 and one line on stderr; never a traceback (an exception out
of `main`), never a half-written or temporary file left in place.

SCALSELECT_FUZZ_EXAMPLES sets the examples per test (default 60, a few seconds each in CI);
SCALSELECT_FUZZ_SHRINK=0 reports failures unminimised, for a long hunt.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from scalselect.cli import main
from scalselect.stores import write_store

FUZZ = settings(
    max_examples=int(os.environ.get("SCALSELECT_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    # SCALSELECT_FUZZ_SHRINK=0: report failures as found, without minimising them (a hunt)
    phases=[Phase.explicit, Phase.reuse, Phase.generate]
    + ([Phase.shrink] if os.environ.get("SCALSELECT_FUZZ_SHRINK", "1") == "1" else []),
)

# JSON text fragments that json.loads accepts and Python handles badly: huge integers, numbers
# beyond float, lone surrogates, non-finite literals.
_AWKWARD_NUMBERS = ["1" * 5000, "9" * 400, "1e400", "-1e400", "NaN", "Infinity", "-0", "1.5", "3", "0"]
_AWKWARD_TEXT = ['"\\ud800"', '"a\\udfffb"', '"\\u0000"', '""', '"coco"', '"x\\ny"', '"\\u00e9t\\u00e9"']
_leaf = st.sampled_from(_AWKWARD_NUMBERS + _AWKWARD_TEXT + ["null", "true", "[]", "{}"])


# option values, as typed on a command line: usually sound (so that most examples reach deep into
# the command), sometimes hostile
def _mostly(sound: list, hostile: list):
    return st.sampled_from(sound * (3 * len(hostile) // len(sound) + 3) + hostile)


_energy = _mostly(["0.9", "0.5", "0.99999", "1"], ["0", "-0.1", "1.5", "nan", "inf", "-inf", "1e-300"])
_seed = _mostly(["0", "7", str(2**63 - 1)], ["-1", "-99", str(2**63), "1" * 30])
_device = _mostly(["auto", "cpu"], ["cuda", "cuda:0", "cuda:x", "meta", "mps", "xla", "cpu:0", "", "CUDA"])
_budget = _mostly(
    ["5", "1", "16%", "100%", "0.5%", "5 ", " 16 %"], ["0", "-5", "0%", "120%", "1e3", "9" * 5000, "nan%", "abc", "100000"]
)
_out = _mostly(["file", "link", "dangling", "-", "/dev/null"], [".", "/", "", "dir", "under-file", "fifo"])
_chunk = _mostly([None, "7", str(2**40)], ["1", "0", "-3"])


def _rows(n: int, d: int, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) @ np.diag(np.linspace(0.2, 3, d)) + 2
    scale = {"plain": 1.0, "tiny": 1e-30, "huge": 1e30, "sub": 1e-42}.get(kind, 1.0)
    x = x * scale
    if kind == "nan":
        x[rng.integers(n), rng.integers(d)] = np.nan
    if kind == "same":
        x[:] = x[0]
    return x.astype(np.float64 if kind in ("tiny", "huge") else np.float32)


def _record_text(i: int, id_text: str | None, extra: str | None) -> str:
    """One LLaVA record as JSON text (so that awkward literals go in verbatim)."""
    parts = [] if id_text is None else [f'"id": {id_text}']
    parts.append(f'"image": "src{i % 3}/{i}.png"')
    parts.append('"conversations": [{"from": "human", "value": "<image>\\nWhat?"}, {"from": "gpt", "value": "A cat."}]')
    if extra is not None:
        parts.append(f'"source": {extra}')
    return "{" + ", ".join(parts) + "}"


class Case:
    """A temporary folder of inputs and the outputs a command may write."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        (tmp / "dir").mkdir()
        (tmp / "file.txt").write_text("x")

    def out(self, kind: str, name: str) -> str:
        tmp = self.tmp
        if kind == "file":
            return str(tmp / name)
        if kind == "dir":
            return str(tmp / "dir")
        if kind == "link":
            target = tmp / f"target-{name}"
            if not (tmp / name).is_symlink():
                (tmp / name).symlink_to(target)
            return str(tmp / name)
        if kind == "dangling":
            link = tmp / f"dangling-{name}"
            if not link.is_symlink():
                link.symlink_to(tmp / "nowhere" / name)
            return str(link)
        if kind == "under-file":
            return str(tmp / "file.txt" / name)
        if kind == "fifo":
            fifo = tmp / f"fifo-{name}"
            if not fifo.exists():
                os.mkfifo(fifo)
            return str(fifo)
        return kind  # ".", "/", "", "-", "/dev/null"

    def snapshot(self) -> dict:
        return {p: p.read_bytes() for p in self.tmp.rglob("*") if p.is_file() and not p.is_symlink()}


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def check_outcome(case: Case, argv: list[str], before: dict) -> tuple[int, str]:
    with contextlib.chdir(case.tmp):  # what a relative or empty path writes is in the snapshot
        rc, out, err = run(argv)
    assert rc in (0, 2), (argv, rc, err)
    assert "Traceback" not in err, err
    event(f"exit {rc}")
    if os.environ.get("FUZZ_SAY"):
        event(err.strip()[:90])
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"scalselect {argv[0]}: error: "), (argv, err)
        after = case.snapshot()  # nothing written: every file as it was, none new
        assert after.keys() == before.keys(), (argv, err, sorted(map(str, after.keys() - before.keys())))
        assert all(after[p] == before[p] for p in before), (argv, err)
    leftovers = [p for p in case.tmp.rglob(".*.tmp")]
    assert not leftovers, leftovers
    return rc, out


@FUZZ
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 12),
    kind=st.sampled_from(["plain", "plain", "tiny", "huge", "sub", "nan", "same"]),
    source=st.sampled_from(["npy", "store", "npz"]),
    energy=_energy,
    seed=_seed,
    device=_device,
    out=_out,
    method=_mostly(["auto", "exact", "sketch"], ["best"]),
    chunk=_chunk,
    flags=st.sets(st.sampled_from(["--standardize", "--l2-normalize", "--quiet"])),
    sketch=_mostly([None, "1", "3", "100000"], ["0"]),
    pilot=_mostly([None, "2", "5"], ["1"]),
)
def test_score_never_fails_with_a_traceback(n, d, kind, source, energy, seed, device, out, method, chunk, flags, sketch, pilot):
    with tempfile.TemporaryDirectory() as tmp:
        case = Case(Path(tmp))
        x = _rows(n, d, kind, seed=n * d)
        ids = [f"s{i}" for i in range(n)]
        if source == "npy":
            np.save(case.tmp / "x.npy", x)
            data = case.tmp / "x.npy"
        elif source == "npz":
            np.savez(case.tmp / "x.npz", representations=x, sample_ids=np.array(ids))
            data = case.tmp / "x.npz"
        else:
            finite = np.isfinite(x).all()
            data = write_store(case.tmp / "store", x if finite else np.nan_to_num(x), ids, dtype="float32", shard_rows=7)
        target = case.out(out, "scores.jsonl")
        argv = [
            "score",
            str(data),
            "--out",
            target,
            "--energy",
            energy,
            "--seed",
            seed,
            "--device",
            device,
            "--method",
            method,
            *sorted(flags),
        ]
        argv += [] if chunk is None else ["--chunk-rows", chunk]
        argv += [] if sketch is None else ["--sketch-size", sketch]
        argv += [] if pilot is None else ["--pilot-rows", pilot]
        rc, printed = check_outcome(case, argv, case.snapshot())
        if rc == 0 and out in ("file", "link", "dangling"):
            lines = [json.loads(line) for line in Path(target).read_text(encoding="utf-8").splitlines()]
            assert 1 <= len(lines) <= n
            values = [line["importance"] for line in lines]
            assert all(np.isfinite(values)) and values == sorted(values, reverse=True)
            assert Path(target).is_symlink() == (out != "file")  # a link stays a link


_id = _mostly(["str", "int", "none"], _AWKWARD_NUMBERS + _AWKWARD_TEXT + ["null", "true", "[]"])
_score_value = _mostly(["sound"], _AWKWARD_NUMBERS + _AWKWARD_TEXT + ["null", "true"])
_field = _mostly([None, '"coco"', '"gqa"'], _AWKWARD_NUMBERS + _AWKWARD_TEXT + ["null", "[]", "{}"])
_shares = st.one_of(
    st.none(),
    st.none(),
    st.just({'"src0"': "2", '"src1"': "1"}),
    st.dictionaries(st.sampled_from(['"src0"', '"src1"', '"x"', '"\\ud800"']), _leaf, max_size=3),
)


def _id_text(i: int, kind: str) -> str | None:
    return {"str": f'"s{i}"', "int": str(i), "none": None}.get(kind, kind)


def _twelve(sound, element):
    """Twelve values: all sound (most examples), or each drawn (some hostile)."""
    return st.one_of(st.just([sound] * 12), st.just([sound] * 12), st.lists(element, min_size=12, max_size=12))


@FUZZ
@given(
    n=st.integers(1, 12),
    ids=st.one_of(_twelve("str", _id), _twelve("int", _id)),
    fields=_twelve(None, _field),
    values=_twelve("sound", _score_value),
    container=st.sampled_from(["json", "jsonl"]),
    budget=_budget,
    seed=_seed,
    out=_out,
    method=st.sampled_from(["scalselect", "random", "length", "cluster"]),
    stratify=_mostly([None, "image-folder", "source"], ["id", "conversations"]),
    shares=_shares,
    scores_extra=_mostly([""], ["\n{}", "\n[1]", '\n{"sample_id": true, "importance": 1}', "\n\n"]),
)
def test_select_never_fails_with_a_traceback(
    n, ids, fields, values, container, budget, seed, out, method, stratify, shares, scores_extra
):
    with tempfile.TemporaryDirectory() as tmp:
        case = Case(Path(tmp))
        records = [_record_text(i, _id_text(i, ids[i]), fields[i]) for i in range(n)]
        pool = case.tmp / f"pool.{container}"
        pool.write_text("[" + ",\n".join(records) + "]" if container == "json" else "\n".join(records), "utf-8")
        lines = []
        for i in range(n):  # scores of the records, by their ids as written
            sample_id = _id_text(i, ids[i]) or str(i)
            value = f"{(i * 7919) % 101 / 100}" if values[i] == "sound" else values[i]
            lines.append(f'{{"sample_id": {sample_id}, "importance": {value}}}')
        (case.tmp / "scores.jsonl").write_text("\n".join(lines) + scores_extra, "utf-8")
        target = case.out(out, "subset.json")
        argv = [
            "select",
            "--scores",
            str(case.tmp / "scores.jsonl"),
            "--data",
            str(pool),
            "--budget",
            budget,
            "--out",
            target,
            "--seed",
            seed,
            "--method",
            method,
        ]
        if method == "cluster":
            vectors = _rows(n, 4, "plain", seed=n)
            write_store(
                case.tmp / "store",
                vectors,
                [json.loads(_id_text(i, ids[i]) or str(i)) for i in range(n)]
                if all(ids[i] in ("str", "int", "none") for i in range(n))
                else list(range(n)),
                dtype="float32",
            )
            argv += ["--store", str(case.tmp / "store"), "--clusters", "2"]
        if stratify is not None:
            argv += ["--stratify-by", stratify]
        if shares is not None:
            (case.tmp / "shares.json").write_text("{" + ", ".join(f"{k}: {v}" for k, v in shares.items()) + "}")
            argv += ["--shares", str(case.tmp / "shares.json")]
        rc, _ = check_outcome(case, argv, case.snapshot())
        if rc == 0 and out in ("file", "link", "dangling"):
            text = Path(target).read_text(encoding="utf-8")
            subset = json.loads(text) if container == "json" else [json.loads(line) for line in text.splitlines()]
            assert 1 <= len(subset) <= n
            summary = json.loads(Path(target).with_name(f"{Path(target).stem}.selection.json").read_text("utf-8"))
            assert summary["selected"] == len(subset)


@FUZZ
@given(
    n=st.integers(2, 30),
    budget=_budget,
    seed=_seed,
    energy=_energy,
    out=st.sampled_from(["file", "-", "dir", "/", "under-file"]),
    methods=_mostly(["scalselect,random", "random", "length,cluster"], ["scalselect,best", ",", ""]),
    clusters=_mostly(["1", "3", "1000"], ["0", "-2"]),
    other_store=_mostly([False], [True]),
    tamper=_mostly([None], ["bit", "cut", "manifest"]),
)
def test_compare_never_fails_with_a_traceback(n, budget, seed, energy, out, methods, clusters, other_store, tamper):
    budget = "1" if budget == "5" and n < 5 else budget
    with tempfile.TemporaryDirectory() as tmp:
        case = Case(Path(tmp))
        x = _rows(n, 6, "plain", seed=n)
        ids = [f"other{i}" for i in range(n)] if other_store else [f"s{i}" for i in range(n)]
        store = write_store(case.tmp / "store", x, ids, dtype="float32", shard_rows=5)
        if tamper == "bit":
            shard = store / "shard-00000.npy"
            raw = bytearray(shard.read_bytes())
            raw[-1] ^= 1
            shard.write_bytes(bytes(raw))
        elif tamper == "cut":
            (store / "shard-00000.npy").write_bytes((store / "shard-00000.npy").read_bytes()[:-3])
        elif tamper == "manifest":
            manifest = json.loads((store / "manifest.json").read_text())
            manifest["shards"][0]["check"] = {"x": 1}
            (store / "manifest.json").write_text(json.dumps(manifest))
        records = [_record_text(i, f'"s{i}"', None) for i in range(n)]
        (case.tmp / "pool.json").write_text("[" + ",\n".join(records) + "]", "utf-8")
        (case.tmp / "scores.jsonl").write_text(
            "\n".join(json.dumps({"sample_id": f"s{i}", "importance": (i * 37 % 11) / 10}) for i in range(n)), "utf-8"
        )
        argv = [
            "compare",
            "--store",
            str(store),
            "--scores",
            str(case.tmp / "scores.jsonl"),
            "--data",
            str(case.tmp / "pool.json"),
            "--budget",
            budget,
            "--seed",
            seed,
            "--energy",
            energy,
            "--methods",
            methods,
            "--clusters",
            clusters,
            "--out",
            case.out(out, "compare.json"),
        ]
        rc, _ = check_outcome(case, argv, case.snapshot())
        if rc == 0 and out == "file":
            report = json.loads((case.tmp / "compare.json").read_text(encoding="utf-8"))
            assert all(np.isfinite(m["projection_error"]) for m in report["methods"].values())


@FUZZ
@given(
    argv=st.lists(
        st.sampled_from(
            [
                "info",
                "--json",
                "--bogus",
                "score",
                "--out",
                "-",
                "x",
                "--energy",
                "nan",
                "--version",
                "--help",
                "select",
                "--n",
                "3",
                "report",
            ]
        ),
        min_size=1,
        max_size=5,
    )
)
def test_any_command_line_is_exit_0_or_2_in_one_line(argv):
    with tempfile.TemporaryDirectory() as tmp:
        case = Case(Path(tmp))
        cwd = os.getcwd()
        os.chdir(tmp)  # relative paths such as `x` land in the case's folder
        try:
            rc, out, err = run(argv)
        finally:
            os.chdir(cwd)
        assert rc in (0, 2), (argv, rc, err)
        assert "Traceback" not in err
        if rc == 2:
            assert len(err.strip().splitlines()) == 1, (argv, err)
        assert not list(case.tmp.rglob(".*.tmp"))


DEMO_SAMPLES = 8  # the size of this module's demo pool (the `demo` fixture of conftest.py)


_SLOW = settings(FUZZ, max_examples=max(4, FUZZ.max_examples // 6))  # each example loads the model


@_SLOW
@given(
    command=st.sampled_from(["extract", "run", "report"]),
    tau=_mostly(["0.9", "0.5"], ["0", "1.5", "nan"]),
    seed=_seed,
    device=_device,
    out=_mostly(["dir"], ["file", "-", "/dev/null", "", "under-file"]),
    workers=_mostly(["0"], ["-1", "100000"]),
    budget=_mostly(["16%", "3"], ["0", "abc"]),
    energy=_energy,
    pool=_mostly(["demo"], ["empty", "surrogate ids", "reply first", "huge id"]),
    extra=_mostly(
        [[]],
        [
            ["--max-length", "0"],
            ["--batch-size", "-2"],
            ["--dtype", "int4"],
            ["--store-dtype", "bfloat16"],
            ["--dist-timeout", "nan"],
            ["--shard-rows", "0"],
        ],
    ),
)
def test_extract_run_and_report_never_fail_with_a_traceback(
    demo, command, tau, seed, device, out, workers, budget, energy, pool, extra
):
    with tempfile.TemporaryDirectory() as tmp:
        case = Case(Path(tmp))
        records = json.loads(Path(demo["pool"]).read_text())
        if pool == "empty":
            records = []
        elif pool == "surrogate ids":
            records[0]["id"], records[1]["id"] = "\ud800", "x\udfff"
        elif pool == "reply first":
            records[0]["conversations"].insert(0, {"from": "gpt", "value": "Hello."})
        data = case.tmp / "pool.json"
        data.write_text(json.dumps(records) if pool != "huge id" else '[{"id": ' + "7" * 5000 + "}]")
        target = case.out(out, "out") if out != "dir" else str(case.tmp / "out")
        common = [
            "--model",
            str(demo["model"]),
            "--data",
            str(data),
            "--image-root",
            str(demo["images"]),
            "--tau",
            tau,
            "--device",
            device,
            "--workers",
            workers,
            "--quiet",
            *extra,
        ]
        if command == "extract":
            argv = ["extract", *common, "--out", target]
        elif command == "run":
            argv = ["run", *common, "--out-dir", target, "--budget", budget, "--energy", energy, "--seed", seed]
        else:
            store = case.tmp / "store"
            x = _rows(len(records) or 1, 6, "plain", seed=1)
            ids = [r.get("id", i) for i, r in enumerate(records)] or [0]
            write_store(store, x, ids, dtype="float32")
            (case.tmp / "scores.jsonl").write_text(
                "\n".join(json.dumps({"sample_id": i, "importance": 1 / (j + 1)}) for j, i in enumerate(ids))
            )
            argv = [
                "report",
                "--store",
                str(store),
                "--scores",
                str(case.tmp / "scores.jsonl"),
                "--data",
                str(data),
                "--image-root",
                str(demo["images"]),
                "--seed",
                seed,
                "--out",
                target,
            ]
        check_outcome(case, argv, case.snapshot())
