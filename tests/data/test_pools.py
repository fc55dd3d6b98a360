import gc
import json
import random

import pytest

from scalselect.data import Pool, read_pool, write_subset
from scalselect.errors import InputError
from pool_files import write_pool


def llava_record(rng, i):
    rec = {
        "id": f"{i:012d}",
        "image": f"coco/train2017/{rng.randrange(10**12):012d}.jpg",
        "conversations": [
            {"from": "human", "value": f"<image>\nWhat is in picture {rng.random()}?"},
            {"from": "gpt", "value": rng.choice(["A cat.", "Un café ☕", "犬です", "x" * rng.randrange(50)])},
        ],
    }
    if rng.random() < 0.3:
        rec["image"] = [rec["image"], "extra/b.png"]
    if rng.random() < 0.2:
        del rec["image"]
    return rec


def sharegpt_record(rng, i):
    return {
        "messages": [
            {"role": "user", "content": f"<image>Describe {rng.randrange(1000)} — ü"},
            {"role": "assistant", "content": rng.choice(["ok", "Ça va", "🙂 fine", "数字 " + str(i)])},
        ],
        "images": [f"img/{rng.randrange(10**6)}.jpg"],
    }


def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("container", ["json", "jsonl"])
@pytest.mark.parametrize("layout", ["llava", "sharegpt"])
@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_random_subset(tmp_path, layout, container, seed):
    rng = random.Random(seed)
    make = llava_record if layout == "llava" else sharegpt_record
    records = [make(rng, i) for i in range(rng.randrange(20, 60))]
    src = write_pool(tmp_path / f"pool.{container}", records, container)

    pool = read_pool(src)
    assert isinstance(pool, Pool)
    assert (pool.layout, pool.container, len(pool)) == (layout, container, len(records))
    assert pool.records == records

    positions = rng.sample(range(len(records)), rng.randrange(1, len(records)))
    out = tmp_path / "sub" / "out.data"
    assert write_subset(pool, positions, out) == len(positions)

    back = read_pool(out)
    assert (back.layout, back.container) == (layout, container)
    assert back.records == [records[p] for p in sorted(positions)]
    # keys order is preserved too
    assert [list(r) for r in back.records] == [list(records[p]) for p in sorted(positions)]
    expected_ids = [records[p]["id"] for p in sorted(positions)] if layout == "llava" else list(range(len(positions)))
    assert back.ids == expected_ids


def test_written_formats(tmp_path):
    records = [{"id": 1, "conversations": []}, {"id": 2, "conversations": [{"from": "human", "value": "é"}]}]
    pool = read_pool(write_pool(tmp_path / "p.json", records, "json"))
    assert write_subset(pool, [1, 0], tmp_path / "o.json") == 2
    assert (tmp_path / "o.json").read_text(encoding="utf-8") == (
        '[\n{"id": 1, "conversations": []},\n{"id": 2, "conversations": [{"from": "human", "value": "é"}]}\n]\n'
    )
    pool = read_pool(write_pool(tmp_path / "p.jsonl", records, "jsonl"))
    assert write_subset(pool, iter([1]), tmp_path / "o.jsonl") == 1
    assert (tmp_path / "o.jsonl").read_text(encoding="utf-8") == (
        '{"id": 2, "conversations": [{"from": "human", "value": "é"}]}\n'
    )
    assert write_subset(pool, [], tmp_path / "empty.json") == 0
    assert (tmp_path / "empty.json").read_text(encoding="utf-8") == ""


def test_ids_kept_exactly(tmp_path):
    records = [
        {"id": "000123", "conversations": []},
        {"id": "abc", "conversations": []},
        {"id": 7, "conversations": []},
        {"conversations": []},  # no id -> its index, 3
        {"id": "3", "conversations": []},  # a string, distinct from the int 3
        {"id": 0, "conversations": []},
    ]
    for container in ("json", "jsonl"):
        pool = read_pool(write_pool(tmp_path / f"p.{container}", records, container))
        assert pool.ids == ["000123", "abc", 7, 3, "3", 0]
        assert [type(i) for i in pool.ids] == [str, str, int, int, str, int]
        assert pool.index_of() == {"000123": 0, "abc": 1, 7: 2, 3: 3, "3": 4, 0: 5}
        assert pool.index_of() is pool.index_of()


def test_non_ascii_and_bom(tmp_path):
    records = [{"messages": [{"role": "user", "content": "<image>Ελληνικά 中文 😀 \u2028 end"}], "images": ["ü.jpg"]}]
    src = tmp_path / "p.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + (json.dumps(records[0], ensure_ascii=False) + "\r\n\n").encode("utf-8"))
    pool = read_pool(src)
    assert pool.records == records and pool.container == "jsonl"
    write_subset(pool, [0], tmp_path / "o.jsonl")
    raw = (tmp_path / "o.jsonl").read_text(encoding="utf-8")
    assert "Ελληνικά 中文 😀" in raw and "\\u" not in raw.replace("\u2028", "")
    assert read_pool(tmp_path / "o.jsonl").records == records

    src = tmp_path / "p.json"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps(records, ensure_ascii=False).encode("utf-8"))
    assert read_pool(src).records == records


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("", ["empty"]),
        ("  \n\t\n", ["empty"]),
        ("[]", ["has no samples"]),
        ("hello", ["expected a JSON array"]),
        ('[\n{"conversations": []},\n{"conversations": [}\n]', ["line 3 column 20", "Expecting value"]),
        (
            '{"conversations": []}\n{"conversations": []}\n{"conversations": ]}\n',
            ["line 3 column 19", "one complete JSON object"],
        ),
        ('{"conversations": []} {"conversations": []}\n', ["line 1 column 23", "Extra data"]),
        ('{\n  "conversations": []\n}\n', ["single JSON object"]),
        ('[{"conversations": []}, {"text": "hi"}]', ["record 1", "unknown layout", "'text'"]),
        ('{"conversations": []}\n\n{"messages": "hi"}\n', ["record 1 (line 3)", "'messages'", "not a list"]),
        ('[{"conversations": []}, 5]', ["record 1", "not an object"]),
        ('[{"conversations": [], "messages": []}]', ["record 0", "both"]),
        ('[{"messages": []}, {"conversations": []}]', ["record 1", "llava", "sharegpt"]),
        ('{"conversations": []}\n[1]\n', ["record 1 (line 2)", "not an object"]),
        ('[{"conversations": []}, {"id": 1.5, "conversations": []}]', ["record 1", "'id'", "1.5"]),
        ('[{"id": [1], "conversations": []}]', ["record 0", "'id'"]),
        ('[{"id": true, "conversations": []}]', ["record 0", "'id'", "boolean"]),
        ('{"conversations": []}\n{"id": null, "conversations": []}\n', ["record 1 (line 2)", "'id'", "null"]),
    ],
)
def test_bad_content(tmp_path, text, fragments):
    src = write_text(tmp_path / "bad_pool.json", text)
    with pytest.raises(InputError) as err:
        read_pool(src)
    msg = str(err.value)
    assert "bad_pool.json" in msg and "\n" not in msg
    assert gc.isenabled()  # the reader pauses the GC while parsing; it must come back on errors
    for fragment in fragments:
        assert fragment in msg


def test_duplicate_ids(tmp_path):
    records = [{"id": i % 7, "conversations": []} for i in range(20)]  # ids 0..6 all duplicated
    src = write_pool(tmp_path / "dups.jsonl", records, "jsonl")
    with pytest.raises(InputError, match="dups.jsonl") as err:
        read_pool(src)
    msg = str(err.value)
    assert "7 duplicated" in msg and "0 at records 0, 7, 14" in msg and "and 2 more" in msg
    assert "5 at records" not in msg  # only five ids are named

    records = [{"id": "a", "conversations": []}, {"id": "b", "conversations": []}, {"id": "a", "conversations": []}]
    with pytest.raises(InputError, match=r"1 duplicated sample id\(s\): 'a' at records 0, 2"):
        read_pool(write_pool(tmp_path / "p.json", records, "json"))


def test_index_id_collides_with_explicit_id(tmp_path):
    records = [{"messages": []}, {"messages": []}, {"messages": []}, {"messages": []}, {"id": 3, "messages": []}]
    with pytest.raises(InputError, match=r"duplicated.*3 at records 3, 4"):
        read_pool(write_pool(tmp_path / "p.json", records, "json"))


def test_invalid_utf8(tmp_path):
    src = tmp_path / "latin.jsonl"
    src.write_bytes(b'{"conversations": []}\n{"conversations": [], "x": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"latin\.jsonl.*UTF-8.*byte 53 \(line 2\)"):
        read_pool(src)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match=r"nope\.json.*no such file"):
        read_pool(tmp_path / "nope.json")
    (tmp_path / "adir").mkdir()
    with pytest.raises(InputError, match=r"adir.*directory"):
        read_pool(tmp_path / "adir")


@pytest.mark.parametrize(
    "positions, fragment",
    [
        ([0, 5], "position 5 out of range"),
        ([-1], "position -1 out of range"),
        ([1, 0, 1], "position 1 given more than once"),
        (["0"], "not an integer"),
        ([True], "not an integer"),
    ],
)
def test_write_subset_bad_positions(tmp_path, positions, fragment):
    pool = read_pool(write_pool(tmp_path / "p.json", [{"conversations": []}] * 5, "json"))
    out = tmp_path / "out.json"
    with pytest.raises(InputError, match="p.json") as err:
        write_subset(pool, positions, out)
    assert fragment in str(err.value)
    assert not out.exists()


def test_write_subset_refuses_to_overwrite_input(tmp_path):
    records = [{"id": i, "conversations": []} for i in range(4)]
    src = write_pool(tmp_path / "p.jsonl", records, "jsonl")
    before = src.read_bytes()
    pool = read_pool(src)
    (tmp_path / "d").mkdir()
    for target in (src, tmp_path / "d" / ".." / "p.jsonl"):
        with pytest.raises(InputError, match="input pool"):
            write_subset(pool, [0], target)
    assert src.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
