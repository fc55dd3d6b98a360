"""Per-source budgets and the baseline selectors of `select`, on
generated pools and scores: no model needed."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from scalselect import InputError
from scalselect.baselines import IMAGE_FOLDER, apportion, source_of
from scalselect.vectors import kmeans
from scalselect.cli import main
from scalselect.data import read_pool
from scalselect.select import read_scores, top_positions, write_scores
from scalselect.stores import write_store

SOURCES = {"coco": 0.45, "gqa": 0.25, "ocr_vqa": 0.2, "textvqa": 0.07, "vg": 0.03}


def make_pool(tmp_path, n=800, seed=0):
    """A LLaVA pool whose sources are both a field and the image folder, with replies of
    random length, and a scores file for every sample."""
    rng = np.random.default_rng(seed)
    names = rng.choice(list(SOURCES), size=n, p=list(SOURCES.values()))
    records = [
        {
            "id": f"s{i}",
            "source": str(name),
            "image": f"{name}/{i:05d}.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is this?"},
                {"from": "gpt", "value": "word " * int(rng.integers(1, 200))},
            ],
        }
        for i, name in enumerate(names)
    ]
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(records))
    scores = tmp_path / "scores.jsonl"
    write_scores(scores, [r["id"] for r in records], rng.random(n))
    return pool, scores, records


def test_apportion_stays_within_one_sample_of_every_target():
    rng = np.random.default_rng(1)
    for _ in range(300):
        sizes = {f"g{i}": int(rng.integers(1, 500)) for i in range(int(rng.integers(1, 9)))}
        budget = int(rng.integers(1, sum(sizes.values()) + 1))
        quotas = apportion(sizes, budget)
        assert sum(quotas.values()) == budget
        assert all(0 <= quotas[g] <= sizes[g] for g in sizes)
        total = sum(sizes.values())
        assert all(abs(quotas[g] - budget * sizes[g] / total) < 1 for g in sizes), (sizes, budget, quotas)


def test_apportion_with_a_share_table_and_a_source_too_small():
    quotas = apportion({"a": 100, "b": 100, "c": 3}, 60, {"a": 1, "b": 1, "c": 1})
    assert quotas == {"a": 29, "b": 28, "c": 3}  # c holds 3 of its 20: the rest shared out
    assert apportion({"a": 10, "b": 10}, 5, {"a": 1.0}) == {"a": 5, "b": 0}  # b has no share
    with pytest.raises(InputError, match="fewer than the budget"):
        apportion({"a": 10, "b": 10}, 15, {"a": 1.0})


def test_sources_from_a_field_or_the_image_folder():
    rec = {"source": "gqa", "image": "coco/train2017/1.jpg"}
    assert source_of(rec, "llava", "source") == "gqa"
    assert source_of(rec, "llava", IMAGE_FOLDER) == "coco"
    assert source_of({"image": "1.jpg"}, "llava", IMAGE_FOLDER) == "(top level)"
    assert source_of({}, "llava", IMAGE_FOLDER) == "(no image)"
    assert source_of({"images": ["vg/2.png"]}, "sharegpt", IMAGE_FOLDER) == "vg"
    assert source_of({}, "llava", "source") == "(none)"


@pytest.mark.parametrize("by", ["source", IMAGE_FOLDER])
@pytest.mark.parametrize("method", ["scalselect", "random", "length"])
def test_stratified_selection_keeps_each_source_share(tmp_path, by, method):
    pool_path, scores_path, records = make_pool(tmp_path)
    out = tmp_path / "subset.json"
    assert (
        main(
            [
                "select",
                "--scores",
                str(scores_path),
                "--data",
                str(pool_path),
                "--budget",
                "16%",
                "--out",
                str(out),
                "--method",
                method,
                "--stratify-by",
                by,
            ]
        )
        == 0
    )
    chosen = read_pool(out).records
    pool = Counter(r["source"] for r in records)
    got = Counter(r["source"] for r in chosen)
    budget = round(0.16 * len(records))
    assert len(chosen) == budget
    for name, size in pool.items():
        assert abs(got[name] - budget * size / len(records)) < 1, (name, got, pool)
    summary = json.loads((tmp_path / "subset.selection.json").read_text())
    assert summary["method"] == method and summary["strata"]["by"] == by
    assert {k: v["subset"] for k, v in summary["strata"]["groups"].items()} == dict(got)
    if method == "scalselect":  # inside each source, the highest scores
        scores = dict(zip(*read_scores(scores_path)))
        for name in pool:
            mine = sorted((scores[r["id"]] for r in records if r["source"] == name), reverse=True)
            kept = sorted((scores[r["id"]] for r in chosen if r["source"] == name), reverse=True)
            assert kept == mine[: len(kept)]


def test_a_share_table_sets_the_shares(tmp_path):
    pool_path, scores_path, records = make_pool(tmp_path)
    (tmp_path / "shares.json").write_text(json.dumps({"coco": 1, "vg": 1}))
    assert (
        main(
            [
                "select",
                "--scores",
                str(scores_path),
                "--data",
                str(pool_path),
                "--budget",
                "40",
                "--out",
                str(tmp_path / "s.json"),
                "--stratify-by",
                "source",
                "--shares",
                str(tmp_path / "shares.json"),
            ]
        )
        == 0
    )
    got = Counter(r["source"] for r in read_pool(tmp_path / "s.json").records)
    vg = sum(r["source"] == "vg" for r in records)
    assert got["vg"] == min(20, vg) and got["coco"] == 40 - got["vg"] and set(got) <= {"coco", "vg"}


def test_baselines_are_deterministic_given_a_seed(tmp_path):
    pool_path, scores_path, records = make_pool(tmp_path)
    pool = read_pool(pool_path)
    ids, scores = read_scores(scores_path)
    pick = lambda **kw: top_positions(pool, ids, scores, "10%", **kw)[0]  # noqa: E731
    assert pick(method="random", seed=3) == pick(method="random", seed=3)
    assert pick(method="random", seed=3) != pick(method="random", seed=4)
    lengths = [len(r["conversations"][1]["value"]) for r in records]
    longest = pick(method="length")
    assert min(lengths[p] for p in longest) >= sorted(lengths, reverse=True)[len(longest) - 1]
    top = pick(method="scalselect")
    assert top == sorted(int(ids[i][1:]) for i in np.argsort(-scores, kind="stable")[:80])  # id s<position>


def blobs(n_per, centres, seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([c + 0.05 * rng.standard_normal((n, len(c))) for n, c in zip(n_per, centres)])


def test_kmeans_finds_separated_blobs_and_is_seeded():
    centres = np.eye(6)[:, :5] * 10
    x = torch.from_numpy(blobs([50, 120, 30, 200, 80, 20], centres, 2).astype(np.float32))
    labels = kmeans(x, 6, seed=0)
    truth = np.repeat(np.arange(6), [50, 120, 30, 200, 80, 20])
    # the same partition, up to the labels' names
    assert len({(a, b) for a, b in zip(truth, labels)}) == 6
    np.testing.assert_array_equal(labels, kmeans(x, 6, seed=0))


def test_cluster_baseline_takes_an_equal_share_per_cluster(tmp_path):
    pool_path, scores_path, records = make_pool(tmp_path, n=500)
    sizes = [250, 150, 60, 40]
    x = blobs(sizes, np.eye(4) * 10, 3).astype(np.float32)
    write_store(tmp_path / "store", x, [r["id"] for r in records], dtype="float32")
    argv = [
        "select",
        "--scores",
        str(scores_path),
        "--data",
        str(pool_path),
        "--budget",
        "100",
        "--method",
        "cluster",
        "--clusters",
        "4",
        "--store",
        str(tmp_path / "store"),
    ]
    assert main(argv + ["--out", str(tmp_path / "a.json")]) == 0
    assert main(argv + ["--out", str(tmp_path / "b.json")]) == 0
    chosen = read_pool(tmp_path / "a.json").records
    assert chosen == read_pool(tmp_path / "b.json").records  # seeded
    blob = {r["id"]: b for r, b in zip(records, np.repeat(np.arange(4), sizes))}
    assert sorted(Counter(blob[r["id"]] for r in chosen).values()) == [25, 25, 25, 25]


def test_bad_combinations_are_one_line_errors(tmp_path, capsys):
    pool_path, scores_path, _ = make_pool(tmp_path, n=100)
    base = ["select", "--scores", str(scores_path), "--data", str(pool_path), "--budget", "10", "--out", str(tmp_path / "s.json")]
    (tmp_path / "bad.json").write_text('{"coco": -1}')
    for extra, message in [
        (["--method", "cluster"], "needs the vectors: pass --store"),
        (["--method", "cluster", "--stratify-by", "source"], "cannot be combined"),
        (["--stratify-by", "source", "--shares", str(tmp_path / "bad.json")], "share >= 0"),
    ]:
        capsys.readouterr()
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
