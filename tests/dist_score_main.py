"""Driver for tests/scoring/test_distributed_scoring.py, run by torchrun on every rank:

    python -m torch.distributed.run --nproc-per-node 2 ... tests/dist_score_main.py SPEC.json

SPEC.json: {"jobs": [{"store": DIR, "out": PATH, "options": {...leverage_scores keywords},
"expect_error": false}, ...]}. Every rank scores each job's store with `leverage_scores(store,
comm=comm)` and writes PATH.rank<R>.json (its own rows); rank 0 also writes PATH, the gathered
result: ids and scores in store order, k, world. An InputError is written to PATH.rank<R>.err;
unless the job expects it, every rank then prints it and exits with code 2 (after a barrier, so
that each rank has written its file before torchrun stops the others).
"""

import json
import sys
from pathlib import Path

from scalselect.distributed import context
from scalselect.errors import InputError
from scalselect.scoring import gather_result, leverage_scores


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    with context(timeout_minutes=spec.get("timeout_minutes", 1.0)) as comm:
        for job in spec["jobs"]:
            out = Path(job["out"])
            try:
                result = leverage_scores(job["store"], comm=comm, device="cpu", **job.get("options", {}))
                full = gather_result(result, comm)
            except InputError as exc:
                out.with_name(f"{out.name}.rank{comm.rank}.err").write_text(str(exc), encoding="utf-8")
                if job.get("expect_error"):
                    continue
                comm.barrier()
                print(f"rank {comm.rank} error: {exc}", file=sys.stderr, flush=True)
                return 2
            mine = {
                "rank": result.rank,
                "world": result.world,
                "rows": len(result.sample_ids),
                "ids": result.sample_ids,
                "scores": result.scores.tolist(),
                "k": result.k,
            }
            out.with_name(f"{out.name}.rank{comm.rank}.json").write_text(json.dumps(mine), encoding="utf-8")
            if comm.is_main:
                everything = {"ids": full.sample_ids, "scores": full.scores.tolist(), "k": full.k, "summary": full.summary()}
                out.write_text(json.dumps(everything), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
