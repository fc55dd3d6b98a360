"""What each mode runs on and how big. full: the whole check (<= 8 min in all on an H200);
quick: <= 3 min; dry: tiny CPU tensors through the same code (a typo in the timing code fails
here, not on the rented GPU)."""

SIZES = {
    "full": {
        "device": "cuda",
        # LLaVA-1.5-7B layer 0: 32 heads (no GQA) of 128; 32 samples padded to 2,048 tokens,
        # 576 vision tokens each after a 35-token system prompt.
        "mass": dict(
            batch=32,
            seq=2048,
            heads=32,
            kv_heads=32,
            head_dim=128,
            vision=576,
            prefix=35,
            dtypes=["bfloat16", "float16"],
            reps=10,
            twin_reps=2,
        ),
        "top": dict(batch=32, seq=2048, dim=4096, vision=576, prefix=35, dtypes=["bfloat16", "float16"], reps=10, twin_reps=3),
        # the engine's chunk: 128 MiB of float32 centred rows = 8,192 rows at D = 4,096
        "gram": dict(rows=665_000, dim=4096, chunk=8192, ks=[128, 1024], reps=3, twin_reps=2),
        "leverage": dict(rows=665_000, dim=4096, warm_rows=32_768, twins=True, xtx=True),
        "extraction": dict(samples=256, batch=16, twin_samples=64, ref_samples=24, tau=0.9),
    },
    "quick": {
        "device": "cuda",
        "mass": dict(
            batch=32,
            seq=2048,
            heads=32,
            kv_heads=32,
            head_dim=128,
            vision=576,
            prefix=35,
            dtypes=["bfloat16"],
            reps=5,
            twin_reps=1,
        ),
        "top": dict(batch=32, seq=2048, dim=4096, vision=576, prefix=35, dtypes=["bfloat16"], reps=5, twin_reps=1),
        "gram": dict(rows=131_072, dim=4096, chunk=8192, ks=[128], reps=2, twin_reps=1),
        "leverage": dict(rows=131_072, dim=4096, warm_rows=16_384, twins=True, xtx=True),
        "extraction": dict(samples=64, batch=16, twin_samples=16, ref_samples=8, tau=0.9),
    },
    "dry": {
        "device": "cpu",
        "mass": dict(
            batch=2,
            seq=96,
            heads=4,
            kv_heads=2,
            head_dim=32,
            vision=32,
            prefix=6,
            dtypes=["bfloat16", "float16"],
            reps=2,
            twin_reps=1,
        ),
        "top": dict(batch=2, seq=96, dim=64, vision=32, prefix=6, dtypes=["bfloat16", "float16"], reps=2, twin_reps=1),
        "gram": dict(rows=3000, dim=64, chunk=1024, ks=[16, 48], reps=2, twin_reps=1),
        "leverage": dict(rows=3000, dim=64, warm_rows=1000, twins=True, xtx=True),
        "extraction": dict(samples=8, batch=4, twin_samples=4, ref_samples=2, tau=0.9),
    },
}
MODES = tuple(SIZES)
