"""Where a batched classification forward spends its time on a GPU.

Times, with MLX on the default device, the pieces of one layer of the
Gemma3-1B-shaped bench model at classification shape (rows x tokens
positions at once) and the whole forward of mlx_lm's model, so that the
forward's time can be set against its matrix products.

    python3 xtask/gpu/classify_ops.py MODEL_DIR [ROWS] [TOKENS]
"""

import sys
import time

import mlx.core as mx
import mlx.nn as nn


def timed(f, n=20):
    """Milliseconds per call of f (evaluated), after three warm-up calls."""
    for _ in range(3):
        mx.eval(f())
    t = time.perf_counter()
    for _ in range(n):
        mx.eval(f())
    return (time.perf_counter() - t) / n * 1e3


def main():
    model_dir = sys.argv[1]
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 18
    m = rows * tokens
    hidden, inter, heads, kv, dim = 1152, 6912, 4, 1, 256
    bf = mx.bfloat16

    def rand(*shape):
        return (mx.random.normal(shape) * 0.02).astype(bf)

    x = rand(m, hidden)
    products = {
        "q/k/v": (rand((heads + 2 * kv) * dim, hidden), x),
        "o": (rand(hidden, heads * dim), rand(m, heads * dim)),
        "gate/up": (rand(2 * inter, hidden), x),
        "down": (rand(hidden, inter), rand(m, inter)),
    }
    total = 0.0
    for name, (w, a) in products.items():
        ms = timed(lambda: a @ w.T)
        flops = 2 * a.shape[0] * a.shape[1] * w.shape[0]
        total += ms
        print(f"ops {name} [{a.shape[0]}x{a.shape[1]}]x[{w.shape[1]}x{w.shape[0]}] "
              f"{ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s")
    print(f"ops products per layer {total:.3f} ms")
    # The same products for every layer, queued together: no wait between
    # them, as in a forward pass.
    layers = 26
    chained = timed(lambda: [a @ w.T for _ in range(layers) for w, a in products.values()], 5)
    flops = layers * sum(2 * a.shape[0] * a.shape[1] * w.shape[0] for w, a in products.values())
    print(f"ops products x {layers} layers, one evaluation {chained:.3f} ms "
          f"{flops / chained / 1e9:.0f} TFLOP/s")
    gu = rand(m, 2 * inter)
    print(f"ops gelu(gate)*up {timed(lambda: nn.gelu_approx(gu[:, :inter]) * gu[:, inter:]):.3f} ms")
    w = mx.ones((hidden,), dtype=bf)
    print(f"ops rms_norm {timed(lambda: mx.fast.rms_norm(x, w, 1e-6)):.3f} ms")
    q = rand(rows, heads, tokens, dim)
    k = rand(rows, kv, tokens, dim)
    v = rand(rows, kv, tokens, dim)
    causal = mx.tril(mx.ones((tokens, tokens), dtype=mx.bool_))
    mask = mx.broadcast_to(causal, (rows, 1, tokens, tokens))
    mx.eval(q, k, v, mask)
    sdpa = mx.fast.scaled_dot_product_attention
    print(f"ops sdpa causal {timed(lambda: sdpa(q, k, v, scale=dim**-0.5, mask='causal')):.3f} ms")
    print(f"ops sdpa bool mask {timed(lambda: sdpa(q, k, v, scale=dim**-0.5, mask=mask)):.3f} ms")
    head = rand(262144, hidden)
    last = rand(rows, hidden)
    print(f"ops output layer {timed(lambda: last @ head.T):.3f} ms")

    from mlx_lm import load

    model, _ = load(model_dir)
    ids = mx.random.randint(10, 1000, (rows, tokens))
    fwd = timed(lambda: model.model(ids), 10)
    print(f"ops mlx_lm forward (no output layer) {fwd:.3f} ms = {rows / fwd * 1e3:.0f} rows/s")


main()
