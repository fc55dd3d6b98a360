"""scalselect.vectors: the scored vectors' moments and principal rows from passes over a store
equal the same figures computed from the whole matrix in float64; compare's figures equal the
in-memory definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalselect import InputError
from scalselect.stores import write_store
from scalselect.vectors import moments, principal_rows, rows_of, scored_chunks
from store_files import reseal
from tolerances import DRAWS, LAMBDA, U32, U64, chunked_gram_error, chunked_gram_tolerance, reordered_sum, summed


def random_store(tmp_path, rows, dim, seed, shard_rows=37, extra=5):
    """A store of `rows` scored plus `extra` unscored rows (ragged shards), its vectors far from the
    origin; and the scored ids in a shuffled order."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows + extra, dim)) * rng.uniform(0.1, 3, dim) + 40).astype(np.float32)
    ids = [f"s{i}" for i in range(rows + extra)]
    store = write_store(tmp_path / f"store-{seed}", x, ids, dtype="float32", shard_rows=shard_rows)
    scored = list(rng.permutation(rows))
    return store, [ids[i] for i in scored], x[scored].astype(np.float64)


def centred_gram(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return (x - mean).T @ (x - mean)


def store_chunks(x: np.ndarray, ids: list, shard_rows: int, mask=None) -> list:
    """The rows of x (ids "s<store row>") as a pass reads them: shard by shard, in store order."""
    rows = np.array([int(sid[1:]) for sid in ids])
    keep = np.ones(len(ids), dtype=bool) if mask is None else mask
    return [
        x[keep & (rows // shard_rows == shard)][np.argsort(rows[keep & (rows // shard_rows == shard)])]
        for shard in np.unique(rows[keep] // shard_rows)
    ]


def smallest_eigenvalue_tolerance(exact: np.ndarray, chunks: list, seed: int = 0) -> float:
    """How far the smallest eigenvalue of a chunked Gram may lie from the float64 one: the
    rounding model pushed through eigvalsh (an entrywise bound through Weyl would cover the
    largest entries' rounding, not the direction that the smallest eigenvalue lies in)."""
    rng = np.random.default_rng(seed)
    smallest = np.linalg.eigvalsh(exact)[0]
    return LAMBDA * max(abs(np.linalg.eigvalsh(exact + chunked_gram_error(chunks, rng))[0] - smallest) for _ in range(DRAWS))


@pytest.mark.parametrize("rows, dim, seed", [(1, 3, 0), (2, 5, 1), (40, 7, 2), (301, 16, 3), (90, 130, 4)])
def test_moments_equal_the_whole_matrix_in_float64(tmp_path, rows, dim, seed):
    store, ids, x = random_store(tmp_path, rows, dim, seed)
    rng = np.random.default_rng(seed + 100)
    masks = {"half": rng.random(rows) < 0.5, "one": np.eye(1, rows, rows // 2, dtype=bool)[0], "none": np.zeros(rows, dtype=bool)}
    m = moments(store, ids, masks)
    mean = x.mean(axis=0)
    assert m.count == rows
    # float64 means of chunks merged in float64: a reordered sum of the rows
    assert np.all(np.abs(m.mean.numpy() - mean) <= reordered_sum(torch.from_numpy(x)).numpy() / rows)
    assert np.all(np.abs(m.gram.numpy() - centred_gram(x, mean)) <= chunked_gram_tolerance(store_chunks(x, ids, 37)))
    for name, mask in masks.items():  # a subset's Gram is centred by the pool's mean
        want = centred_gram(x[mask], mean)
        if mask.any():
            allowed = chunked_gram_tolerance(store_chunks(x, ids, 37, mask)) + summed(rows, U64) * (
                np.abs(x[mask]).T @ np.abs(x[mask])
            )  # moved to the pool's mean in float64
            assert np.all(np.abs(m.subsets[name].numpy() - want) <= allowed), name
        else:
            assert np.all(m.subsets[name].numpy() == 0), name


def test_moments_keep_their_precision_when_the_first_shard_is_unlike_the_pool(tmp_path):
    """A pool sorted by source: a small first shard far from the rest, scales from 1 to 1e-3."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((6000, 32)) * np.logspace(0, -3, 32)
    x[:50] += 1000.0
    write_store(tmp_path / "sorted", x.astype(np.float32), [f"s{i}" for i in range(6000)], dtype="float32", shard_rows=50)
    x = x.astype(np.float32).astype(np.float64)
    ids = [f"s{i}" for i in range(6000)]
    mask = np.zeros(6000, dtype=bool)
    mask[40:3000] = True
    m = moments(tmp_path / "sorted", ids, {"part": mask})
    exact, exact_part = centred_gram(x, x.mean(axis=0)), centred_gram(x[mask], x.mean(axis=0))
    chunks = store_chunks(x, ids, 50)
    assert np.all(np.abs(m.gram.numpy() - exact) <= chunked_gram_tolerance(chunks))
    part = store_chunks(x, ids, 50, mask)
    allowed = chunked_gram_tolerance(part) + summed(6000, U64) * (np.abs(x[mask]).T @ np.abs(x[mask]))
    assert np.all(np.abs(m.subsets["part"].numpy() - exact_part) <= allowed)
    # the smallest direction (1e-3 columns, 6e-3 of energy under a 5e7 offset block) is resolved
    got = np.linalg.eigvalsh(m.gram.numpy())[0] - np.linalg.eigvalsh(exact)[0]
    assert abs(got) <= smallest_eigenvalue_tolerance(exact, chunks) < 1e-2 * np.linalg.eigvalsh(exact)[0]


def test_a_non_finite_vector_of_a_scored_sample_is_one_line(tmp_path):
    store, ids, x = random_store(tmp_path, 30, 4, 8)
    bad = np.load(store / "shard-00000.npy")
    bad[2, 1] = np.nan
    np.save(store / "shard-00000.npy", bad)
    reseal(store)  # as a writer would have committed it, had it let a NaN through
    with pytest.raises(InputError, match="has a vector holding NaN or inf in the store"):
        moments(store, ids)


def test_scored_chunks_cover_every_scored_row_once(tmp_path):
    store, ids, x = random_store(tmp_path, 100, 4, 7)
    seen = np.zeros(len(ids), dtype=int)
    for index, rows in scored_chunks(store, ids, chunk_rows=16):
        seen[index] += 1
        np.testing.assert_array_equal(rows.numpy(), x[index].astype(np.float32))
    assert (seen == 1).all()
    which = np.array([5, 0, 99, 17])
    np.testing.assert_array_equal(rows_of(store, ids, which).numpy(), x[which].astype(np.float32))
    with pytest.raises(InputError, match="1 scored samples have no vector in the store"):
        next(scored_chunks(store, ids + ["nowhere"]))


def test_principal_rows_are_the_centred_rows_on_the_leading_directions(tmp_path):
    store, ids, x = random_store(tmp_path, 200, 100, 9)
    got = principal_rows(store, ids, dims=12).numpy()
    centred = x - x.mean(axis=0)
    gram = centred.T @ centred
    top = np.linalg.eigh(gram)[1][:, ::-1][:, :12]
    expected = centred @ top
    signs = np.sign((got * expected).sum(axis=0))  # each direction up to its sign
    # the Gram's rounding through the eigenvectors (the model, drawn), then the float32
    # projection of rows shifted by the float32 mean (D terms)
    rng, moved = np.random.default_rng(0), np.zeros_like(expected)
    for _ in range(DRAWS):
        drawn = np.linalg.eigh(gram + chunked_gram_error(store_chunks(x, ids, 37), rng))[1][:, ::-1][:, :12]
        drawn *= np.sign((drawn * top).sum(axis=0))
        moved = np.maximum(moved, np.abs(centred @ drawn - expected))
    projection = summed(100) * (np.abs(centred) @ np.abs(top)) + U32 * (np.abs(x.mean(axis=0)) @ np.abs(top))
    assert np.all(np.abs(got * signs - expected) <= LAMBDA * moved + projection)
    # with no more dimensions than the limit, a rotation: distances stay, but for the rounding
    # of the rows, of the float32 rotation (orthonormal to u32) and of its D-term products
    store, ids, x = random_store(tmp_path, 60, 8, 10)
    y = principal_rows(store, ids).double()
    exact = torch.from_numpy(x)
    norms = (exact - exact.mean(dim=0)).norm(dim=1)
    reach = (summed(8) + 2 * U32 * np.sqrt(8)) * (norms[:, None] + norms[None, :])
    distances = lambda rows: torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist")  # noqa: E731
    assert torch.all((distances(y) - distances(exact)).abs() <= reach)


def test_compare_figures_equal_their_in_memory_definitions(tmp_path):
    """compare's projection error and coverage, from one pass, against SVD and cdist on the whole
    matrix, for subsets of several sizes (one with fewer rows than k)."""
    import json

    from scalselect.compare import compare_methods
    from scalselect.data import read_pool
    from scalselect.scoring.eigen import rank_for_energy
    from scalselect.select import top_positions

    store, ids, x = random_store(tmp_path, 150, 12, 11)
    pool_file = tmp_path / "pool.json"
    pool_file.write_text(
        json.dumps(
            [
                {
                    "id": f"s{i}",
                    "image": f"src{i % 3}/{i}.png",
                    "conversations": [{"from": "human", "value": "q" * (i % 7 + 1)}, {"from": "gpt", "value": "a"}],
                }
                for i in range(155)
            ]
        )
    )
    pool = read_pool(pool_file)
    scores = np.random.default_rng(4).random(len(ids))
    centred = x - x.mean(axis=0)
    gram = centred.T @ centred
    values = torch.linalg.eigvalsh(torch.from_numpy(gram)).flip(0)
    k = rank_for_energy(values, float(values.sum()), 0.9)
    chunks = store_chunks(x, ids, 37)
    rng = np.random.default_rng(0)

    def projection_error(whole: np.ndarray, part: np.ndarray, rows: int) -> float:
        right = np.linalg.eigh(part)[1][:, -min(k, rows) :]
        return 1 - float((right * (whole @ right)).sum()) / float(np.trace(whole))

    for budget in ("40%", "2"):
        report = compare_methods(
            pool, ids, scores, store, budget, ["scalselect", "random", "length", "cluster"], seed=1, clusters=3
        )
        assert report["k"] == k
        index = {sid: i for i, sid in enumerate(ids)}
        for method, figures in report["methods"].items():
            chosen, _ = top_positions(pool, ids, scores, budget, method=method, seed=1, store=store, clusters=3)
            rows = [index[pool.ids[p]] for p in chosen]
            mask = np.zeros(len(ids), dtype=bool)
            mask[rows] = True
            part = centred_gram(x[mask], x.mean(axis=0))
            error = projection_error(gram, part, len(rows))
            # both Grams' rounding (the model, drawn) through the subset's directions
            moved = max(
                abs(
                    projection_error(
                        gram + chunked_gram_error(chunks, rng),
                        part + chunked_gram_error(store_chunks(x, ids, 37, mask), rng),
                        len(rows),
                    )
                    - error
                )
                for _ in range(DRAWS)
            )
            assert abs(figures["projection_error"] - error) <= LAMBDA * moved, (method, budget)
            # every row is probed here; distances of float32 rows measured in float64 over D terms
            nearest = (
                torch.cdist(torch.from_numpy(x), torch.from_numpy(x[rows]), compute_mode="donot_use_mm_for_euclid_dist")
                .min(dim=1)
                .values.numpy()
            )
            assert abs(figures["coverage_max"] - nearest.max()) <= 2 * summed(12, U64) * nearest.max()
            assert abs(figures["coverage_mean"] - nearest.mean()) <= 2 * summed(12 + 150, U64) * nearest.mean()


@pytest.mark.parametrize(
    "probes, rows, dim, seed", [(1, 1, 3, 0), (5, 1, 4, 1), (300, 7, 16, 2), (600, 900, 64, 3), (257, 40, 1024, 4)]
)
def test_nearest_distances_equal_direct_cdist(probes, rows, dim, seed):
    """compare's coverage: the candidates of a float32 product, measured exactly, give the
    distances cdist measures directly, including exact zeros for probes that are rows and near
    ties between rows."""
    from scalselect.compare import nearest_distances

    gen = torch.Generator().manual_seed(seed)
    b = (torch.randn(rows, dim, generator=gen) * 3 + 50).float()
    a = torch.randn(probes, dim, generator=gen, dtype=torch.float64) * 3 + 50
    if rows > 1:
        b[-1] = b[0] + 1e-4  # a near tie
    a[: probes // 3] = b[torch.randint(rows, (probes // 3,), generator=gen)].double()  # probes that are rows
    expected = torch.cdist(a, b.double(), compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    got = nearest_distances(a, b)
    assert torch.equal(got[: probes // 3], torch.zeros(probes // 3, dtype=torch.float64))
    # direct float64 sums of the same squared differences, in another order
    torch.testing.assert_close(got, expected, rtol=2 * summed(dim, U64), atol=0.0)


def test_a_probe_among_many_near_duplicates_finds_itself():
    """More near-duplicates than CANDIDATES around a probe that is one of them."""
    from scalselect.compare import CANDIDATES, nearest_distances

    gen = torch.Generator().manual_seed(30)
    base = torch.randn(1024, generator=gen, dtype=torch.float64) * 50 + 100
    rows = (base + 0.01 * torch.randn(4 * CANDIDATES, 1024, generator=gen, dtype=torch.float64)).float()
    far = base + 500  # another probe, far away: the products are taken about the probes' mean
    probe = torch.cat([rows[[5, 17]].double(), far[None]])
    got = nearest_distances(probe, rows)
    assert torch.equal(got[:2], torch.zeros(2, dtype=torch.float64))
    want = torch.cdist(far[None], rows.double(), compute_mode="donot_use_mm_for_euclid_dist").min()
    torch.testing.assert_close(got[2], want, rtol=2 * summed(1024, U64), atol=0.0)
