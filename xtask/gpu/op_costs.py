"""What MLX's evaluation costs per operation, by kind, on the current
device: chains of N dependent operations of one kind on decode-sized
arrays (one token of a Qwen3-0.6B-shaped model, bfloat16; independent
splits for `split`), built and
evaluated five times; prints the median build and evaluation time per
operation. Views (reshape, slice, split) launch no kernel; the others
launch one each.

Usage: python op_costs.py [N]
"""

import statistics
import sys
import time

import mlx.core as mx

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
x = mx.random.normal((1, 1, 1024)).astype(mx.bfloat16)
w = (mx.random.normal((1024, 1024)) * 0.02).astype(mx.bfloat16)
g = mx.ones((1024,), dtype=mx.bfloat16)
heads = mx.random.normal((1, 16, 1, 64)).astype(mx.bfloat16)
mx.eval(x, w, g, heads)


def chain(kind):
    if kind == "add":
        y = x
        for _ in range(N):
            y = y + x
    elif kind == "matmul":
        y = x
        for _ in range(N):
            y = y @ w
    elif kind == "rms_norm":
        y = x
        for _ in range(N):
            y = mx.fast.rms_norm(y, g, 1e-6)
    elif kind == "rope":
        y = heads
        for _ in range(N):
            y = mx.fast.rope(y, 64, traditional=False, base=1e6, scale=1.0, offset=7)
    elif kind == "reshape":
        y = x
        for i in range(N):
            y = y.reshape(1, 16, 1, 64) if i % 2 == 0 else y.reshape(1, 1, 1024)
    elif kind == "slice":
        y = mx.concatenate([x, x], axis=-1)
        for i in range(N):
            y = y[..., : 2048 - (i % 2)]
    elif kind == "split":
        # independent splits (a chain would shrink the array)
        return [mx.split(x, [512], axis=-1)[0] for _ in range(N)]
    elif kind == "sdpa":
        k = mx.random.normal((1, 8, 512, 128)).astype(mx.bfloat16)
        q = mx.random.normal((1, 16, 1, 128)).astype(mx.bfloat16)
        mx.eval(k, q)
        y = q
        for _ in range(N):
            y = mx.fast.scaled_dot_product_attention(y, k, k, scale=0.088)
    return [y]


for kind in ["add", "matmul", "rms_norm", "rope", "sdpa", "reshape", "slice", "split"]:
    mx.eval(*chain(kind))
    builds, evals = [], []
    for _ in range(5):
        t = time.perf_counter()
        y = chain(kind)
        b = time.perf_counter()
        mx.eval(*y)
        e = time.perf_counter()
        builds.append(b - t)
        evals.append(e - b)
    print(
        f"op-cost {kind} n={N} build_us={1e6 * statistics.median(builds) / N:.2f} "
        f"eval_us={1e6 * statistics.median(evals) / N:.2f}"
    )
