"""Child process of test_columnar_pools: reads a columnar pool every way scalselect does and prints,
as JSON, the peak growth of anonymous memory (bytes) of each step. Anonymous memory is what a
pool larger than RAM must not fill; the memory-mapped Arrow files are page cache, not counted.
It also prints what the scan of fields (`map`) read: bytes through read calls (Parquet) and
file pages it touched in memory maps (save_to_disk), which must not include the images.

usage: python pool_memory_main.py POOL SUBSET_OUT
"""

import json
import sys
import threading
import time


def status(key: str = "RssAnon") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def anonymous() -> int:
    return status("RssAnon")


def bytes_read() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def peak_growth(step) -> int:
    base, peak, done = anonymous(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], anonymous())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        step()
    finally:
        done.set()
        watcher.join()
    return max(peak[0], anonymous()) - base


def main() -> None:
    from scalselect.data import read_pool, write_subset

    pool_path, out = sys.argv[1], sys.argv[2]
    opened = {}
    growth = {"open": peak_growth(lambda: opened.setdefault("pool", read_pool(pool_path)))}
    pool = opened["pool"]
    n = len(pool)

    def reading(step) -> int:
        """What `step` read through read calls plus the file pages it mapped in."""
        read_before, mapped_before = bytes_read(), status("RssFile")
        growth[step.__name__] = peak_growth(step)
        return bytes_read() - read_before + status("RssFile") - mapped_before

    def scan():  # first: the records' pass maps in the pages a later scan would touch
        pool.map(lambda r: len(r["id"]), range(n))

    def record():  # one at a time, each dropped before the next, as a worker does
        for p in range(n):
            pool.record(p)

    pool.map(len, [0])  # loads what a scan needs of pyarrow first: its libraries are file pages too
    read = {"scan": reading(scan), "record": reading(record)}
    growth["write"] = peak_growth(lambda: write_subset(pool, range(0, n, 3), out))
    print(json.dumps({"rows": n, "growth": growth, "read": read}))


if __name__ == "__main__":
    main()
