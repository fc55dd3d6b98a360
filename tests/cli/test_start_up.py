"""Commands import torch and transformers only when they need them: in a fresh interpreter,
what `sys.modules` holds after a command ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pool_files import write_pool

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers")

PROBE = """
import json, sys
{run}
print(json.dumps({{name: name in sys.modules for name in {heavy!r}}}))
"""


def imported(code: str, cwd: Path) -> dict:
    """Which of HEAVY a fresh interpreter holds after running `code`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(run=code, heavy=HEAVY)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def command(*argv: str) -> str:
    return f"from scalselect.cli import main\nassert main({list(argv)!r}) == 0"


def subcommands() -> list[str]:
    from scalselect.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    path = tmp_path_factory.mktemp("start-up")
    records = [
        {
            "id": f"s{i}",
            "image": f"src{i % 3}/{i}.png",
            "conversations": [{"from": "human", "value": "<image>\n" + "q" * (i % 5 + 1)}, {"from": "gpt", "value": "a"}],
        }
        for i in range(30)
    ]
    write_pool(path / "pool.json", records, "json")
    rng = np.random.default_rng(0)
    with open(path / "scores.jsonl", "w", encoding="utf-8") as f:
        for i in rng.permutation(30):
            f.write(json.dumps({"sample_id": f"s{i}", "importance": float(rng.random())}) + "\n")
    np.save(path / "x.npy", rng.standard_normal((200, 12)).astype(np.float32))
    return path


def test_the_package_and_every_help_import_neither(files):
    assert imported("import scalselect", files) == {"torch": False, "transformers": False}
    for argv in [["--help"], *[[name, "--help"] for name in subcommands()]]:
        code = f"from scalselect.cli import main\nassert main({argv!r}) == 0"
        assert imported(code, files) == {"torch": False, "transformers": False}, argv


@pytest.mark.parametrize("method", ["scalselect", "random", "length"])
def test_select_on_a_json_pool_imports_neither(files, method):
    got = imported(
        command(
            "select",
            "--data",
            "pool.json",
            "--scores",
            "scores.jsonl",
            "--budget",
            "25%",
            "--out",
            f"subset-{method}.json",
            "--method",
            method,
        ),
        files,
    )
    assert got == {"torch": False, "transformers": False}
    assert len(json.loads((files / f"subset-{method}.json").read_text(encoding="utf-8"))) == 8


def test_submodules_are_attributes_of_the_package_as_before(files):
    got = imported(
        "import scalselect\nassert callable(scalselect.stores.read_manifest)\nassert callable(scalselect.options.share)", files
    )
    assert got["transformers"] is False


def test_score_imports_torch_but_not_transformers(files):
    got = imported(command("score", "x.npy", "--out", "s.jsonl", "--quiet"), files)
    assert got == {"torch": True, "transformers": False}


def test_public_names_still_resolve():
    import scalselect

    for name in scalselect.__all__:
        assert getattr(scalselect, name) is not None, name
    assert set(scalselect.__all__) <= set(dir(scalselect))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        scalselect.nothing  # noqa: B018
