"""The native kernels (csrc/bindings.cpp): raw pointers as integers, sizes, a dtype code
(scalselect.kernels._DTYPE_CODES), and for the CUDA entries the stream last. Call them through
scalselect.kernels, which checks shapes, dtypes, contiguity and devices first; contracts in
csrc/include/scalselect/kernels.h. The *_cuda entries exist in CUDA builds only."""

def build_info() -> dict[str, object]: ...
def set_num_threads(n: int) -> None: ...
def gram_prep_cpu(
    x: int,
    dtype: int,
    n: int,
    d: int,
    row_stride: int,
    l2_normalize: bool,
    shift: int,
    inv_scale: int,
    out: int,
    colsum: int,
    colsumsq: int,
) -> None: ...
def gram_prep_cuda(
    x: int,
    dtype: int,
    n: int,
    d: int,
    row_stride: int,
    l2_normalize: bool,
    shift: int,
    inv_scale: int,
    out: int,
    colsum: int,
    colsumsq: int,
    stream: int,
) -> None: ...
def projected_sqnorm_cpu(
    x: int, dtype: int, n: int, d: int, row_stride: int, l2_normalize: bool, shift: int, inv_scale: int, w: int, k: int, out: int
) -> None: ...
def projected_sqnorm_cuda(
    x: int,
    dtype: int,
    n: int,
    d: int,
    row_stride: int,
    l2_normalize: bool,
    shift: int,
    inv_scale: int,
    w: int,
    k: int,
    out: int,
    stream: int,
) -> None: ...
def attention_mass_cpu(
    q: int,
    k: int,
    dtype: int,
    batch: int,
    heads: int,
    kv_heads: int,
    seq: int,
    hd: int,
    key_valid: int,
    row_is_instruction: int,
    col_is_vision: int,
    key_lo: int,
    key_hi: int,
    scale: float,
    softcap: float,
    out: int,
) -> None: ...
def attention_mass_cuda(
    q: int,
    k: int,
    dtype: int,
    batch: int,
    heads: int,
    kv_heads: int,
    seq: int,
    hd: int,
    key_valid: int,
    row_is_instruction: int,
    col_is_vision: int,
    key_lo: int,
    key_hi: int,
    scale: float,
    softcap: float,
    out: int,
    stream: int,
) -> None: ...
def top_mass_mean_cpu(
    hidden: int, dtype: int, batch: int, seq: int, dim: int, mass: int, col_is_vision: int, tau: float, out: int, kept: int
) -> None: ...
def top_mass_mean_cuda(
    hidden: int,
    dtype: int,
    batch: int,
    seq: int,
    dim: int,
    mass: int,
    col_is_vision: int,
    tau: float,
    out: int,
    kept: int,
    stream: int,
) -> None: ...
