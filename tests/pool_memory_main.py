"""Child process of test_columnar_pools: reads a columnar pool every way scalselect does and prints,
as JSON, the peak growth of anonymous memory (bytes) of each step. Anonymous memory is what a
pool larger than RAM must not fill; the memory-mapped Arrow files are page cache, not counted.

usage: python pool_memory_main.py POOL SUBSET_OUT
"""

import json
import sys
import threading
import time


def anonymous() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


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

    def every_record():  # one at a time, each dropped before the next, as a worker does
        for p in range(n):
            pool.record(p)

    growth["record"] = peak_growth(every_record)
    growth["map"] = peak_growth(lambda: pool.map(lambda r: len(r["id"]), range(n)))
    growth["write"] = peak_growth(lambda: write_subset(pool, range(0, n, 3), out))
    print(json.dumps({"rows": n, "growth": growth}))


if __name__ == "__main__":
    main()
