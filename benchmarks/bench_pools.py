"""Reading a pool in each format, side by side: JSON + image files, Parquet, save_to_disk.

    python benchmarks/bench_pools.py [--rows 20000] [--image-kb 64] [--workers 4] [--dir /tmp/scalselect-pools]

The same samples (incompressible "image" bytes of --image-kb each, LLaVA layout) are written as
a JSON pool with one file per image, as Parquet in row groups of 100 (what `datasets` writes for
images) and as a save_to_disk folder. Then, one child process per format (so that each peak of
anonymous memory is its own), the ways scalselect reads a pool are timed:

- open: read_pool (the ids, the layout);
- records: what the extraction's DataLoader workers do: --workers readers, one after the other,
  each takes its share of the positions, dealt in blocks of `pool.block_rows` (a Parquet row
  group), and gets each record and its image bytes (the JSON pool reads the file). Per sample;
- scan: the conversation length of every sample (select --method length), the best of two;
- write: a 16 % subset written back in the pool's format.

All files are in the page cache when timed (they were just written): this measures the CPU cost
of the format, not the disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FORMATS = ("json", "parquet", "save_to_disk")


def make_pools(folder: Path, rows: int, image_kb: int) -> dict:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "pool.json", "parquet": folder / "pool.parquet", "save_to_disk": folder / "saved"}
    if all(p.exists() for p in paths.values()):
        return paths
    rng = np.random.default_rng(0)
    sources = ["coco", "gqa", "ocr_vqa", "textvqa", "vg"]
    names = [f"{sources[i % 5]}/{i:07d}.jpg" for i in range(rows)]
    turns = [
        [
            {"from": "human", "value": "<image>\n" + "What is in the picture? " * int(1 + i % 7)},
            {"from": "gpt", "value": "A thing. " * int(1 + i % 11)},
        ]
        for i in range(rows)
    ]
    images = [rng.bytes(image_kb << 10) for _ in range(rows)]
    for source in sources:
        (folder / "images" / source).mkdir(parents=True, exist_ok=True)
    for name, data in zip(names, images):
        (folder / "images" / name).write_bytes(data)
    records = [{"id": f"s{i:07d}", "image": names[i], "conversations": turns[i]} for i in range(rows)]
    paths["json"].write_text(json.dumps(records))
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "id": [r["id"] for r in records],
            "image": pa.array([{"bytes": d, "path": n} for d, n in zip(images, names)], image),
            "conversations": turns,
        }
    )
    pq.write_table(table, paths["parquet"], row_group_size=100)
    datasets.Dataset(table).save_to_disk(str(paths["save_to_disk"]))
    return paths


PEAK = [0]  # the largest growth of RssAnon seen (VmHWM would count mapped file pages too)


def _watch_anonymous() -> None:
    import threading

    def read() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))

    base = read()

    def loop():
        while True:
            PEAK[0] = max(PEAK[0], read() - base)
            time.sleep(0.005)

    threading.Thread(target=loop, daemon=True).start()


def measure(kind: str, path: Path, workers: int) -> dict:
    """In a child process: the timings of one format."""
    from scalselect.baselines import conversation_length
    from scalselect.data import read_pool, write_subset
    from scalselect.pipeline import deal

    _watch_anonymous()
    root = path.parent / "images"
    t0 = time.perf_counter()
    pool = read_pool(path)
    opened = time.perf_counter() - t0

    def image_bytes(record: dict) -> bytes:
        ref = record["image"]
        return (root / ref).read_bytes() if isinstance(ref, str) else ref["bytes"]

    n = len(pool)
    t0 = time.perf_counter()
    got = 0
    for share in deal(np.arange(n), workers, pool.block_rows):  # as extraction deals them to its workers
        for p in share:
            got += len(image_bytes(pool.record(int(p))))
    per_record = (time.perf_counter() - t0) / n
    scan = []
    for _ in range(2):  # the best of two: the first pays for pyarrow's lazy imports
        t0 = time.perf_counter()
        lengths = pool.map(lambda r: conversation_length(r, pool.layout), range(n))
        scan.append(time.perf_counter() - t0)
    scan = min(scan)
    chosen = np.sort(np.random.default_rng(1).choice(n, size=int(0.16 * n), replace=False))
    out = path.parent / f"subset-{kind}{'.json' if kind == 'json' else '.parquet' if kind == 'parquet' else ''}"
    t0 = time.perf_counter()
    write_subset(pool, chosen.tolist(), out)
    write = time.perf_counter() - t0
    return {
        "open_s": opened,
        "record_us": per_record * 1e6,
        "scan_s": scan,
        "write_s": write,
        "anon_peak_mib": PEAK[0] / 2**20,
        "bytes_read": got,
        "lengths": int(sum(lengths)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--image-kb", type=int, default=64)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/scalselect-pools"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.child[1]), args.workers)))
        return
    folder = args.dir / f"{args.rows}x{args.image_kb}k"
    t0 = time.perf_counter()
    paths = make_pools(folder, args.rows, args.image_kb)
    print(f"pools of {args.rows:,} samples with {args.image_kb} KB images in {folder} ({time.perf_counter() - t0:.0f} s to make)")
    results = {}
    for kind in FORMATS:
        child = subprocess.run(
            [sys.executable, __file__, "--workers", str(args.workers), "--child", kind, str(paths[kind])],
            capture_output=True,
            text=True,
            check=True,
        )
        results[kind] = json.loads(child.stdout.strip().splitlines()[-1])
    assert len({r["bytes_read"] for r in results.values()}) == 1, "the formats read different bytes"
    assert len({r["lengths"] for r in results.values()}) == 1, "the formats read different conversations"
    base = results["json"]
    print(f"\n| format | open | per record ({args.workers} readers) | scan of lengths | write 16 % | anonymous memory peak |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, r in results.items():
        ratio = lambda key: "" if kind == "json" else f" ({r[key] / base[key]:.2f}×)"  # noqa: E731
        print(
            f"| {kind} | {r['open_s']:.2f} s{ratio('open_s')} | {r['record_us']:.1f} µs{ratio('record_us')} | "
            f"{r['scan_s']:.2f} s{ratio('scan_s')} | {r['write_s']:.2f} s{ratio('write_s')} | "
            f"{r['anon_peak_mib']:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
