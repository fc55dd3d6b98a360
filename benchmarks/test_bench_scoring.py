"""Scoring at N=20,000, D=4,096 float32: scalselect vs the reference method, a plain PyTorch
Gram pipeline, scalselect's own PyTorch twins, and one torch X^T X; plus each kernel vs its twin.

    pytest benchmarks/ -s

The main matrix has a decaying spectrum (sigma_i ~ i^-0.7, plus noise), which gives k ~ 100 at
90 % energy; a flatter one (k ~ 1,000, where the full eigh is used) is timed too.
"""

import numpy as np
import pytest
import torch

import matrices  # tests/ (benchmarks/conftest.py puts it on sys.path)
import official
from scalselect import kernels, leverage_scores
from scalselect.kernels import twins

N, D = 20_000, 4_096


def spectrum_matrix(decay: float, noise: float) -> torch.Tensor:
    return matrices.spectrum_matrix(N, D, decay=decay, noise=noise, offset=0.3, seed=0, dtype=torch.float32)


@pytest.fixture(scope="module")
def matrix():
    return spectrum_matrix(0.7, 0.001)  # k ~ 100: the block Krylov solver


def reference_method(x: np.ndarray, energy=0.9):
    """What the reference implementation does (tests/official.py): centre, full thin SVD,
    twice, in the input's dtype (numpy)."""
    return official.scores(official.preprocess(x, False, False), energy)[0]


def torch_gram_pipeline(x: torch.Tensor, energy=0.9):
    """The obvious pure-PyTorch version: centre, X^T X, full eigh, project."""
    xc = x - x.mean(dim=0)
    vals, vecs = torch.linalg.eigh((xc.T @ xc).double())
    vals, vecs = vals.flip(0), vecs.flip(1)
    k = int(torch.nonzero(torch.cumsum(vals, 0) >= energy * vals.sum())[0]) + 1
    w = (vecs[:, :k] / vals[:k].sqrt()).float()
    return ((xc @ w).double() ** 2).sum(dim=1)


def test_scalselect(record, matrix):
    res = record("scalselect", lambda: leverage_scores(matrix), rounds=5)
    print(f"\nscalselect: k={res.k}, eig={res.eig_method}, timings={res.timings}")


def test_scalselect_flat_spectrum(record):
    """A flatter spectrum (sigma_i ~ i^-0.8 plus 1 % noise): k ~ 1,000, full eigh."""
    flat = spectrum_matrix(0.8, 0.01)
    res = record("scalselect_flat", lambda: leverage_scores(flat), rounds=1)
    print(f"\nscalselect (flat): k={res.k}, eig={res.eig_method}, timings={res.timings}")


def test_scalselect_twins(record, matrix):
    record("scalselect_twins", lambda: leverage_scores(matrix, backend="torch"), rounds=1)


def test_torch_gram_pipeline(record, matrix):
    record("torch_gram_pipeline", lambda: torch_gram_pipeline(matrix), rounds=1)


def test_torch_xtx(record, matrix):
    record("torch_xtx", lambda: matrix.T @ matrix, rounds=5)


def test_reference_svd(record, matrix):
    scores = record("reference_svd", lambda: reference_method(matrix.numpy()), rounds=1)
    ours = leverage_scores(matrix).scores
    assert np.max(np.abs(ours - scores) / (scores + scores.mean())) < 1e-4


@pytest.mark.parametrize("impl", ["native", "twin"])
def test_kernel_gram_prep(record, matrix, impl):
    chunk = matrix[:4096]
    shift = chunk.double().mean(0)
    fn = {
        "native": lambda: kernels.gram_prep(chunk, shift, None, False, backend="native"),
        "twin": lambda: twins.gram_prep(chunk, shift, None, False),
    }[impl]
    record(f"gram_prep_{impl}", fn, rounds=5)


@pytest.mark.parametrize("impl", ["native", "twin"])
@pytest.mark.parametrize("k", [16, 256, 1024])
def test_kernel_projection(record, matrix, k, impl):
    """The fused kernel vs its twin (centre, float32 GEMM, square-sum) on a 4,096-row chunk."""
    chunk = matrix[:4096]
    shift = chunk.double().mean(0)
    w = torch.randn(D, k) / D**0.5
    fn = {
        "native": lambda: kernels.projected_sqnorm(chunk, shift, None, False, w, backend="native"),
        "twin": lambda: twins.projected_sqnorm(chunk, shift, None, False, w),
    }[impl]
    record(f"proj_{impl}_k{k}", fn, rounds=5)
