"""Parquet and save_to_disk pools with the images inside: they extract to the same vectors as the
same pool as JSON + image files, `select` writes their subsets back in their own format, and
reading them holds a bounded amount of memory whatever their size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from scalselect import InputError, read_pool, write_subset
from scalselect.cli import main
from scalselect.pipeline import ExtractOptions, PoolSamples, deal, extract_store
from scalselect.stores import load_representations, read_skipped

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


DEMO_SAMPLES = 40  # the size of this module's demo pool (the `demo` fixture of conftest.py)


def embed(name: str, root: Path, missing: bytes | None = None) -> dict:
    """An image as the `datasets` Image feature stores it: its bytes and its path. For a file
    that does not exist, `missing` (default: no bytes, only the path); extraction then skips the
    sample as unreadable, as it does the JSON pool's sample."""
    file = root / name
    return {"bytes": file.read_bytes() if file.exists() else missing, "path": name}


def as_sharegpt(record: dict) -> dict:
    roles = {"human": "user", "gpt": "assistant"}
    images = record.get("image", [])
    return {
        "id": record["id"],
        "images": [images] if isinstance(images, str) else images,
        "messages": [{"role": roles[t["from"]], "content": t["value"]} for t in record["conversations"]],
    }


def extract(demo, pool, out, **kw) -> Path:
    options = dict(workers=0, progress=False, store_dtype="float32", shard_rows=8, device="cpu")
    extract_store(demo["model"], pool, demo["images"], out, ExtractOptions(**{**options, **kw}))
    return out


def assert_same_store(a: Path, b: Path) -> None:
    """Same ids, bit-identical vectors, same skips with the same reasons."""
    ids_a, x_a = load_representations(a)
    ids_b, x_b = load_representations(b)
    assert sorted(ids_a) == sorted(ids_b) and len(ids_a) > 0
    rows_b = dict(zip(ids_b, x_b))
    for sample_id, row in zip(ids_a, x_a):
        np.testing.assert_array_equal(row, rows_b[sample_id], err_msg=str(sample_id))
    skips = lambda store: {s["sample_id"]: s["reason"] for s in read_skipped(store)}  # noqa: E731
    assert skips(a) == skips(b) and skips(a)


def select(tmp_path, store, pool, out, budget="40%") -> Path:
    scores = tmp_path / f"{out.name}.scores.jsonl"
    assert main(["score", str(store), "--out", str(scores), "--quiet", "--method", "exact"]) == 0
    assert main(["select", "--scores", str(scores), "--data", str(pool), "--budget", budget, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def parquet_pool(demo, tmp_path_factory):
    """LLaVA layout, one `image` struct per sample, in two Parquet files of row groups of 7, and
    the same samples as JSON + files."""
    tmp = tmp_path_factory.mktemp("parquet")
    records = [r for r in demo["records"] if not isinstance(r.get("image"), list)]
    (tmp / "pool.json").write_text(json.dumps(records))
    table = pa.table(
        {
            "id": [r["id"] for r in records],
            "image": pa.array([embed(r["image"], demo["images"]) if "image" in r else None for r in records], IMAGE),
            "conversations": [r["conversations"] for r in records],
            "source": [r["id"].split("-")[0] for r in records],  # another column, carried along
        }
    )
    (tmp / "pool").mkdir()
    pq.write_table(table.slice(0, 20), tmp / "pool" / "part-0.parquet", row_group_size=7)
    pq.write_table(table.slice(20), tmp / "pool" / "part-1.parquet", row_group_size=7)
    return tmp / "pool.json", tmp / "pool", table


@pytest.fixture(scope="module")
def saved_pool(demo, tmp_path_factory):
    """ShareGPT layout, a list of Image values per sample, saved by `datasets` itself in three
    shards, and the same samples as JSON + files."""
    tmp = tmp_path_factory.mktemp("saved")
    records = [as_sharegpt(r) for r in demo["records"]]
    (tmp / "pool.json").write_text(json.dumps(records))
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "images": datasets.List(datasets.Image()),
            "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        }
    )
    # (`datasets` reads the size of an image given by its path alone: its bytes must be there)
    rows = [{**r, "images": [embed(name, demo["images"], b"not a PNG") for name in r["images"]]} for r in records]
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp / "pool"), num_shards=3)
    return tmp / "pool.json", tmp / "pool"


def test_parquet_pool_extracts_to_the_json_pools_vectors(demo, parquet_pool, tmp_path):
    as_json, as_parquet, _ = parquet_pool
    pool = read_pool(as_parquet)
    assert (pool.container, pool.layout, len(pool)) == ("parquet", "llava", len(read_pool(as_json)))
    assert len(pool.pieces) == 6  # 20 + 17 rows in groups of 7: the pieces' seams are crossed
    json_store = extract(demo, as_json, tmp_path / "json")
    assert_same_store(json_store, extract(demo, as_parquet, tmp_path / "parquet"))
    # DataLoader workers each open the files and read forward through the row groups
    assert_same_store(json_store, extract(demo, as_parquet, tmp_path / "workers", workers=2, batch_size=3))


def test_save_to_disk_pool_extracts_to_the_json_pools_vectors(demo, saved_pool, tmp_path):
    as_json, saved = saved_pool
    pool = read_pool(saved)
    assert (pool.container, pool.layout, len(pool)) == ("save_to_disk", "sharegpt", len(read_pool(as_json)))
    assert len(pool.files) == 3
    assert any(len(pool.record(p)["images"]) == 2 for p in range(len(pool)))  # two-image samples
    json_store = extract(demo, as_json, tmp_path / "json")
    assert_same_store(json_store, extract(demo, saved, tmp_path / "saved", workers=2))


def test_select_writes_a_parquet_subset_back_as_parquet(demo, parquet_pool, tmp_path):
    as_json, as_parquet, table = parquet_pool
    store = extract(demo, as_parquet, tmp_path / "store")
    subset = select(tmp_path, store, as_parquet, tmp_path / "subset.parquet")
    from_json = select(tmp_path, extract(demo, as_json, tmp_path / "json"), as_json, tmp_path / "from-json.json")

    written = pq.read_table(subset)
    assert written.schema.equals(pq.read_schema(as_parquet / "part-0.parquet"), check_metadata=True)
    chosen = [r["id"] for r in json.loads(from_json.read_text())]
    assert written.column("id").to_pylist() == chosen  # the JSON pool's subset, in pool order
    position = {sample_id: i for i, sample_id in enumerate(table.column("id").to_pylist())}
    assert written.to_pylist() == table.take([position[i] for i in chosen]).to_pylist()  # bytes included
    again = read_pool(subset)
    assert again.container == "parquet" and again.ids == chosen
    summary = json.loads((tmp_path / "subset.selection.json").read_text())
    assert summary["format"] == "llava parquet" and summary["selected"] == len(chosen)


def test_select_writes_a_save_to_disk_subset_that_datasets_loads(demo, saved_pool, tmp_path):
    as_json, saved = saved_pool
    subset = select(tmp_path, extract(demo, saved, tmp_path / "store"), saved, tmp_path / "subset")
    from_json = select(tmp_path, extract(demo, as_json, tmp_path / "json"), as_json, tmp_path / "from-json.json")
    chosen = [r["id"] for r in json.loads(from_json.read_text())]

    original, loaded = datasets.load_from_disk(str(saved)), datasets.load_from_disk(str(subset))
    assert loaded.features == original.features
    assert loaded["id"] == chosen
    position = {sample_id: i for i, sample_id in enumerate(original["id"])}
    expected = original.data.table.take([position[i] for i in chosen])
    assert loaded.data.table.to_pylist() == expected.to_pylist()  # image bytes and paths included
    image = loaded[0]["images"][0]  # decoded by `datasets`, as the trainer will
    assert image.size == original[position[chosen[0]]]["images"][0].size and image.getbbox() is not None

    # selecting again over it replaces the dataset whole
    select(tmp_path, tmp_path / "store", saved, subset, budget="3")
    assert len(datasets.load_from_disk(str(subset))) == 3
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".subset")]  # no leftovers


def test_run_on_a_save_to_disk_pool_writes_its_subset_as_a_dataset(demo, saved_pool, tmp_path):
    _, saved = saved_pool
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--model",
                str(demo["model"]),
                "--data",
                str(saved),
                "--image-root",
                str(demo["images"]),
                "--budget",
                "5",
                "--out-dir",
                str(out),
                "--workers",
                "0",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    subset = datasets.load_from_disk(str(out / "subset"))
    assert len(subset) == 5 and set(subset["id"]) <= set(read_pool(saved).ids)


class _Positions:
    """A stand-in pool whose record at a position is the position."""

    layout = "llava"

    def __init__(self, n, block_rows):
        self.ids, self.block_rows = list(range(10 * n + 1)), block_rows

    def record(self, pos):
        return pos


def _who_reads(record, layout, sample_id):
    return torch.utils.data.get_worker_info().id, record


@pytest.mark.parametrize(
    "n, workers, block", [(0, 2, 4), (1, 2, 4), (7, 3, 2), (40, 2, 64), (101, 4, 8), (103, 3, 10), (9, 8, 64), (17, 8, 4)]
)
def test_each_dataloader_worker_reads_whole_blocks_dealt_in_turn(n, workers, block):
    """So a Parquet row group is decoded by one worker, not by all of them, and a pool sorted
    by source still spreads over the workers."""
    positions = np.sort(np.random.default_rng(n).choice(10 * n + 1, size=n, replace=False))
    shares = [share.tolist() for share in deal(positions, workers, block)]
    assert sorted(sum(shares, [])) == positions.tolist()
    lengths = [len(share) for share in shares]
    assert lengths == sorted(lengths, reverse=True) and (n < workers or min(lengths) > 0)  # no one idle
    size = max(1, min(block, n // workers))  # blocks of `block`, or of n // workers when less is shared
    blocks = [positions[i : i + size].tolist() for i in range(0, n, size)]
    expected = [sum(blocks[w::workers], []) for w in range(workers)]
    assert shares == expected
    samples = PoolSamples(_Positions(n, block), positions, _who_reads)
    loader = torch.utils.data.DataLoader(samples, batch_size=None, num_workers=workers, collate_fn=lambda x: x)
    read = list(loader)
    assert sorted(p for _, p in read) == positions.tolist()
    assert [[p for w, p in read if w == worker] for worker in range(workers)] == expected


def test_compare_and_report_read_a_parquet_pool(demo, parquet_pool, tmp_path):
    """Sources come from the image structs' paths; thumbnails from the embedded bytes."""
    _, as_parquet, table = parquet_pool
    store = extract(demo, as_parquet, tmp_path / "store")
    subset = select(tmp_path, store, as_parquet, tmp_path / "subset.parquet")
    scores, figures = tmp_path / "subset.parquet.scores.jsonl", tmp_path / "compare.json"
    assert (
        main(
            [
                "compare",
                "--store",
                str(store),
                "--scores",
                str(scores),
                "--data",
                str(as_parquet),
                "--budget",
                "10",
                "--clusters",
                "3",
                "--out",
                str(figures),
            ]
        )
        == 0
    )
    shares = json.loads(figures.read_text())["methods"]["random"]["shares"]
    folders = {r["image"]["path"].split("/")[0] for r in table.to_pylist() if r["image"] and r["image"]["bytes"]}
    assert set(shares) == folders and len(folders) >= 3
    (tmp_path / "images-elsewhere").mkdir()  # thumbnails cannot come from image files
    assert (
        main(
            [
                "report",
                "--store",
                str(store),
                "--scores",
                str(scores),
                "--subset",
                str(subset),
                "--image-root",
                str(tmp_path / "images-elsewhere"),
                "--out",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') >= 3 + 24 and 'class="none"' not in page


def test_scans_leave_the_image_bytes_out_and_keep_their_paths(parquet_pool, saved_pool):
    _, as_parquet, table = parquet_pool
    pool = read_pool(as_parquet)
    positions = np.random.default_rng(0).permutation(len(pool))[:15]
    seen = pool.map(lambda r: r, positions)
    rows = table.to_pylist()
    for p, record in zip(positions, seen):
        expected = rows[p]["image"]
        assert record["image"] == (None if expected is None else {"path": expected["path"]})
        assert record["conversations"] == rows[p]["conversations"] and record["id"] == rows[p]["id"]
    assert pool.record(int(positions[0])) == rows[positions[0]]  # a whole record keeps its bytes

    saved = read_pool(saved_pool[1])
    for p, record in enumerate(saved.map(lambda r: r, range(len(saved)))):
        assert record["images"] == [{"path": image["path"]} for image in saved.record(p)["images"]]
        assert record["messages"] == saved.record(p)["messages"]


def test_bare_byte_images_and_ids_by_position(demo, tmp_path):
    """An `images` column of plain bytes (no paths), no id column: ids are the row numbers."""
    records = [as_sharegpt(r) for r in demo["records"] if r["id"] != "missing-image"]
    images = [[(demo["images"] / name).read_bytes() for name in r["images"]] for r in records]
    table = pa.table({"images": pa.array(images, pa.list_(pa.binary())), "messages": [r["messages"] for r in records]})
    pq.write_table(table, tmp_path / "bare.parquet", row_group_size=5)
    pool = read_pool(tmp_path / "bare.parquet")
    assert pool.ids == list(range(len(records)))
    assert pool.record(3)["images"] == images[3]
    assert pool.map(lambda r: r["images"], [3]) == [[{"path": None}]]
    (tmp_path / "named.json").write_text(json.dumps([{**r, "id": i} for i, r in enumerate(records)]))
    assert_same_store(
        extract(demo, tmp_path / "named.json", tmp_path / "json"), extract(demo, tmp_path / "bare.parquet", tmp_path / "bare")
    )


def test_image_paths_in_a_parquet_pool_are_read_under_the_image_root(demo, saved_pool, tmp_path):
    """ShareGPT layout with `images` a list of path strings: nothing embedded."""
    as_json = saved_pool[0]
    records = json.loads(as_json.read_text())
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "paths.parquet", row_group_size=9)
    pool = read_pool(tmp_path / "paths.parquet")
    assert pool.layout == "sharegpt" and pool.map(lambda r: r["images"], [0]) == [records[0]["images"]]
    assert_same_store(extract(demo, as_json, tmp_path / "json"), extract(demo, tmp_path / "paths.parquet", tmp_path / "pq"))


def bad_parquet(tmp_path, name, **columns) -> Path:
    pq.write_table(pa.table(columns), tmp_path / name)
    return tmp_path / name


TURNS = [[{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]] * 2


@pytest.mark.parametrize(
    "columns, message",
    [
        (dict(id=["a", "b"], image=["x.png", "y.png"]), "neither 'conversations'"),
        (dict(id=["a", "b"], conversations=TURNS, messages=[[{"role": "user", "content": "q"}]] * 2), "has both"),
        (dict(id=["a", "b"], conversations=["[]", "[]"]), "column 'conversations' is string; expected a list"),
        (dict(id=[0.5, 1.5], conversations=TURNS), "column 'id' is double"),
        (dict(id=["a", None], conversations=TURNS), "record 1 has a null 'id'"),
        (dict(id=["a", "a"], conversations=TURNS), "duplicated sample id"),
        (dict(id=["a", "b"], conversations=TURNS, image=[1, 2]), "column 'image' is int64"),
    ],
)
def test_bad_columnar_pools_are_refused_in_one_line(tmp_path, columns, message):
    with pytest.raises(InputError, match=message) as caught:
        read_pool(bad_parquet(tmp_path, "bad.parquet", **columns))
    assert "\n" not in str(caught.value)


def test_unreadable_and_unusual_folders_are_refused_in_one_line(tmp_path, saved_pool, capsys):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(InputError, match="broken.parquet: cannot read"):
        read_pool(tmp_path / "broken.parquet")
    dd = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.load_from_disk(str(saved_pool[1]))}).save_to_disk(str(dd))
    with pytest.raises(InputError, match="is a DatasetDict \\(splits: train\\); pass one split's folder"):
        read_pool(dd)
    (tmp_path / "empty").mkdir()
    assert (
        main(
            [
                "select",
                "--scores",
                str(tmp_path / "s.jsonl"),
                "--data",
                str(tmp_path / "empty"),
                "--budget",
                "1",
                "--out",
                str(tmp_path / "o.json"),
            ]
        )
        == 2
    )
    assert "neither a save_to_disk dataset nor a folder of .parquet files" in capsys.readouterr().err


def test_a_parquet_subset_must_not_be_named_json(parquet_pool, tmp_path):
    from scalselect import write_subset

    with pytest.raises(InputError, match="the subset of a Parquet pool is Parquet"):
        write_subset(read_pool(parquet_pool[1]), [0, 1], tmp_path / "subset.json")
    assert not (tmp_path / "subset.json").exists()


def test_large_row_groups_are_warned_of_on_one_line(parquet_pool, tmp_path, monkeypatch, capsys):
    from scalselect.data import columnar

    monkeypatch.setattr(columnar, "BIG_ROW_GROUP", 1000)  # bytes: every row group of the pool is larger
    with pytest.warns(RuntimeWarning, match="part-0.parquet has row groups of .* GiB; every reader"):
        read_pool(parquet_pool[1])
    capsys.readouterr()
    main(
        [
            "select",
            "--scores",
            str(tmp_path / "none.jsonl"),
            "--data",
            str(parquet_pool[1]),
            "--budget",
            "1",
            "--out",
            str(tmp_path / "s.parquet"),
        ]
    )
    err = capsys.readouterr().err
    assert err.startswith("warning: part-0.parquet has row groups") and "row_group_size=1000" in err.splitlines()[0]


def test_the_digest_follows_the_files(parquet_pool, tmp_path):
    _, as_parquet, table = parquet_pool
    one = read_pool(as_parquet).digest()
    assert one == read_pool(as_parquet).digest()
    pq.write_table(table, tmp_path / "copy.parquet", compression="none")
    copy = read_pool(tmp_path / "copy.parquet").digest()
    data = bytearray((tmp_path / "copy.parquet").read_bytes())
    image = table.column("image")[0]["bytes"].as_py()
    at = data.index(image) + len(image) // 2
    data[at] ^= 0xFF  # one byte of an image, same size: the digest covers a small file whole
    (tmp_path / "copy.parquet").write_bytes(bytes(data))
    assert read_pool(tmp_path / "copy.parquet").digest() != copy


@pytest.mark.parametrize("kind", ["parquet", "save_to_disk"])
def test_reading_holds_bounded_memory_whatever_the_pools_size(tmp_path, kind):
    """A 600 MB pool of 1,200 incompressible 512 KB images, read the ways scalselect reads it
    (open, every record in turn, a scan of a field, a subset of a third written back), in a fresh
    process: no step may grow the process's anonymous memory by a quarter of the pool, and the scan
    of fields must not read the images (2 % of the pool at most, through reads or mapped pages)."""
    rows, size = 1200, 512 << 10
    rng = np.random.default_rng(1)
    table = pa.table(
        {
            "id": [f"s{i}" for i in range(rows)],
            "image": pa.array([{"bytes": rng.bytes(size), "path": f"coco/{i}.jpg"} for i in range(rows)], IMAGE),
            "conversations": TURNS[:1] * rows,
        }
    )
    if kind == "parquet":
        pool, out = tmp_path / "big.parquet", tmp_path / "subset.parquet"
        pq.write_table(table, pool, row_group_size=16)
    else:
        pool, out = tmp_path / "big", tmp_path / "subset"
        datasets.Dataset(table).save_to_disk(str(pool))
    del table
    script = Path(__file__).resolve().parents[1] / "pool_memory_main.py"
    child = subprocess.run([sys.executable, str(script), str(pool), str(out)], capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["rows"] == rows
    for step, grew in report["growth"].items():
        assert grew < rows * size / 4, (step, grew / 2**20)
    assert report["read"]["scan"] < rows * size / 50  # a scan of fields reads no image bytes
    assert report["read"]["record"] > rows * size / 2  # (as reading the records does: the meter sees)
    assert len(read_pool(out)) == rows // 3


def test_a_corrupt_parquet_page_is_one_line_not_a_traceback(tmp_path):
    rng = np.random.default_rng(5)
    images = [rng.bytes(1000) for _ in range(6)]
    table = pa.table(
        {
            "id": [f"s{i}" for i in range(6)],
            "image": pa.array([{"bytes": b, "path": f"a/{i}.png"} for i, b in enumerate(images)], IMAGE),
            "conversations": TURNS[:1] * 6,
        }
    )
    pq.write_table(table, tmp_path / "pool.parquet", compression="none", use_dictionary=False)
    data = bytearray((tmp_path / "pool.parquet").read_bytes())
    at = data.index(images[2])
    data[at - 4 : at] = b"\xff\xff\xff\x7f"  # the length of image 2: far past the page's end
    (tmp_path / "pool.parquet").write_bytes(bytes(data))
    pool = read_pool(tmp_path / "pool.parquet")  # the ids and paths are intact
    assert pool.map(lambda r: r["image"]["path"], [5]) == ["a/5.png"]
    for attempt in (lambda: pool.record(2), lambda: write_subset(pool, [1, 2], tmp_path / "s.parquet")):
        with pytest.raises(InputError, match="pool.parquet: cannot read") as caught:
            attempt()
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "s.parquet").exists()


def test_a_corrupt_arrow_offset_is_refused_at_open(tmp_path):
    """A bad offset in a memory-mapped file would crash a reader (SIGBUS): it is caught when the
    dataset is opened."""
    batch = pa.record_batch({"id": ["abcdefghijklm", "nopqrstuvwxyzabc"], "conversations": pa.array(TURNS)})
    (tmp_path / "ds").mkdir()
    arrow = tmp_path / "ds" / "data-00000-of-00001.arrow"
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data = arrow.read_bytes()
    offsets = np.array([0, 13, 29], dtype=np.int32).tobytes()  # the ids' offsets
    assert data.count(offsets) == 1
    arrow.write_bytes(data.replace(offsets, np.array([0, 13, 1 << 20], dtype=np.int32).tobytes()))
    (tmp_path / "ds" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    with pytest.raises(InputError, match="cannot read") as caught:
        read_pool(tmp_path / "ds")
    assert "\n" not in str(caught.value)
    (tmp_path / "ds" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "../elsewhere.arrow"}]}))
    with pytest.raises(InputError, match="must list data files by their names in the folder"):
        read_pool(tmp_path / "ds")


def test_columns_whose_names_hold_dots_survive_scans(tmp_path):
    table = pa.table(
        {
            "id": ["a", "b"],
            "image.source": ["coco", "vg"],
            "image": pa.array([{"bytes": b"x", "path": "p/1.png"}, {"bytes": b"y", "path": "q/2.png"}], IMAGE),
            "conversations": TURNS,
        }
    )
    pq.write_table(table, tmp_path / "dots.parquet")
    pool = read_pool(tmp_path / "dots.parquet")
    assert pool.map(lambda r: (r["image.source"], r["image"]), [1, 0]) == [
        ("vg", {"path": "q/2.png"}),
        ("coco", {"path": "p/1.png"}),
    ]


def test_a_pool_of_many_parquet_files_keeps_few_open(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):
        pq.write_table(pa.table({"id": [f"s{i}"], "conversations": TURNS[:1]}), folder / f"part-{i:03d}.parquet")
    pool = read_pool(folder)

    def open_here():
        return sum(
            os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder))
            for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")
        )

    seen = 0
    for p in range(len(pool)):
        assert pool.record(p)["id"] == f"s{p}"
        seen = max(seen, open_here())
    assert pool.map(lambda r: r["id"], range(60)) == [f"s{i}" for i in range(60)]
    assert seen <= 2 and open_here() <= 2


def test_save_to_disk_subsets_are_named_as_folders_and_never_hold_the_pool(saved_pool, tmp_path):
    from scalselect import write_subset

    pool = read_pool(saved_pool[1])
    with pytest.raises(InputError, match="is a save_to_disk folder; name it without the .json suffix"):
        write_subset(pool, [0], tmp_path / "subset.json")
    with pytest.raises(InputError, match="holds or is inside the input pool"):
        write_subset(pool, [0], saved_pool[1].parent)  # would replace the folder that holds the pool
    info = json.loads((saved_pool[1] / "dataset_info.json").read_text())
    info["splits"] = {"train": {"num_examples": len(pool)}}
    write_subset(pool, [0, 1], tmp_path / "sub")
    assert "splits" not in json.loads((tmp_path / "sub" / "dataset_info.json").read_text())


def test_without_pyarrow_a_columnar_pool_says_what_to_install(parquet_pool, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now fails
    assert (
        main(
            [
                "select",
                "--scores",
                str(tmp_path / "s.jsonl"),
                "--data",
                str(parquet_pool[1]),
                "--budget",
                "1",
                "--out",
                str(tmp_path / "s.parquet"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "need pyarrow: pip install 'scalselect[arrow]'" in err[0]
