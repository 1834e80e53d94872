"""Operation benchmarks through Python MLX (`mlx.core`).

The Python side of `cargo xtask bench ops`: the cases of
`mlx-metal/benches/ops.rs`, under the same `op/dtype/shape` names, with the
same inputs, each built and evaluated (`mx.eval`) inside the timed loop
(`chain100_build` alone only builds its graph).
Timing follows criterion's flat sampling: one untimed call, a warm-up that
doubles its iterations until `--warm-up` seconds have passed (which also
estimates the time of one call), then `--samples` samples of the same number
of iterations filling about `--measurement` seconds; the median of the
samples' per-iteration times is reported.

    python bench_ops.py --list
    python bench_ops.py [--samples N] [--warm-up S] [--measurement S] [--quiet] [ID ...]

Prints one JSON object per case on stdout: {"id", "median_ns", "samples",
"iters"} or {"id", "error"}; progress goes to stderr. Exits 1 if a case
failed, 2 for an unknown case name.
"""

import argparse
import json
import math
import sys
import time

import mlx.core as mx

# The single-op cases' model: Llama-style, 2048 wide, 32 query heads and 4
# KV heads of 64, vocabulary 32000 (as in ops.rs).
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 2048, 32, 4, 64, 32000
SEQ = 512
ELEMENTS = 1 << 20
# The decoder-layer case: the bench model's layer (Qwen3-0.6B-shaped).
LAYER_HIDDEN, LAYER_HEADS, LAYER_KV_HEADS, LAYER_HEAD_DIM = 1024, 16, 8, 128
LAYER_MLP, LAYER_CONTEXT = 3072, 300

DTYPES = {"f32": mx.float32, "bf16": mx.bfloat16}


def normal(shape, dtype):
    a = mx.random.normal(shape, dtype=dtype)
    mx.eval(a)
    return a


class Case:
    """`setup()` makes the inputs and returns `run`; with `per_iteration`,
    `per_iteration()` makes a fresh state before each call (untimed) and
    `run(state)` is timed; without `evaluate` the result is dropped
    unevaluated."""

    def __init__(self, op, dtype, shape, setup, per_iteration=None, evaluate=True):
        self.id = f"{op}/{dtype}/{shape}"
        self.setup = setup
        self.per_iteration = per_iteration
        self.evaluate = evaluate


CASES = []


def case(op, dtype, shape, setup, per_iteration=None, evaluate=True):
    CASES.append(Case(op, dtype, shape, setup, per_iteration, evaluate))


def matmul_cases():
    shapes = [(n, n, n) for n in (128, 256, 512, 1024, 2048, 4096)]
    shapes.append((1, HIDDEN, VOCAB))
    for name, dt in DTYPES.items():
        for m, k, n in shapes:

            def setup(m=m, k=k, n=n, dt=dt):
                a, b = normal((m, k), dt), normal((k, n), dt)
                return lambda: a @ b

            case("matmul", name, f"{m}x{k}x{n}", setup)


def softmax_cases():
    for vocab in (1024, 32768, 131072):

        def setup(vocab=vocab):
            x = normal((1, vocab), mx.float32)
            return lambda: mx.softmax(x, axis=-1)

        case("softmax", "f32", f"1x{vocab}", setup)


def elementwise_cases():
    f32 = mx.float32

    def add():
        a, b = normal((ELEMENTS,), f32), normal((ELEMENTS,), f32)
        return lambda: a + b

    def mul():
        a, b = normal((ELEMENTS,), f32), normal((ELEMENTS,), f32)
        return lambda: a * b

    def silu():
        # As mlx-metal's Array::silu: x * sigmoid(x), two ops, not compiled.
        a = normal((ELEMENTS,), f32)
        return lambda: a * mx.sigmoid(a)

    case("add", "f32", str(ELEMENTS), add)
    case("mul", "f32", str(ELEMENTS), mul)
    case("silu", "f32", str(ELEMENTS), silu)


def norm_cases():
    for op in ("rms_norm", "layer_norm"):
        for name, dt in DTYPES.items():
            for length in (1, SEQ):

                def setup(op=op, dt=dt, length=length):
                    x = normal((1, length, HIDDEN), dt)
                    w, b = normal((HIDDEN,), dt), normal((HIDDEN,), dt)
                    if op == "rms_norm":
                        return lambda: mx.fast.rms_norm(x, w, 1e-5)
                    return lambda: mx.fast.layer_norm(x, w, b, 1e-5)

                case(op, name, f"1x{length}x{HIDDEN}", setup)


def attention_cases():
    scale = HEAD_DIM**-0.5
    for name, dt in DTYPES.items():
        # Decode: one new position after SEQ; prefill: SEQ positions from 0.
        for length, offset in ((1, SEQ), (SEQ, 0)):

            def setup(dt=dt, length=length, offset=offset):
                x = normal((1, HEADS, length, HEAD_DIM), dt)
                return lambda: mx.fast.rope(
                    x, HEAD_DIM, traditional=False, base=10000.0, scale=1.0, offset=offset
                )

            case("rope", name, f"1x{HEADS}x{length}x{HEAD_DIM}", setup)
    for name, dt in DTYPES.items():
        for length in (1, SEQ):
            causal = length > 1
            shape = f"q1x{HEADS}x{length}x{HEAD_DIM}_kv1x{KV_HEADS}x{SEQ}x{HEAD_DIM}"
            if causal:
                shape += "_causal"

            def setup(dt=dt, length=length, causal=causal):
                q = normal((1, HEADS, length, HEAD_DIM), dt)
                k = normal((1, KV_HEADS, SEQ, HEAD_DIM), dt)
                v = normal((1, KV_HEADS, SEQ, HEAD_DIM), dt)
                mask = "causal" if causal else None
                return lambda: mx.fast.scaled_dot_product_attention(
                    q, k, v, scale=scale, mask=mask
                )

            case("sdpa", name, shape, setup)


def layer_cases():
    import mlx.nn as nn

    def linear():
        x = normal((1, 1, HIDDEN), mx.float32)
        layer = nn.Linear(HIDDEN, HIDDEN, bias=False)
        layer.weight = normal((HIDDEN, HIDDEN), mx.float32)
        return lambda: layer(x)

    def embedding():
        table = nn.Embedding(VOCAB, HIDDEN)
        table.weight = normal((VOCAB, HIDDEN), mx.float32)
        ids = mx.random.randint(0, VOCAB, (1, 128), dtype=mx.int32)
        mx.eval(ids)
        return lambda: table(ids)

    case("linear", "f32", f"1x{HIDDEN}x{HIDDEN}", linear)
    case("embedding", "f32", f"ids1x128_table{VOCAB}x{HIDDEN}", embedding)


def reduction_cases():
    def total():
        x = normal((ELEMENTS,), mx.float32)
        return lambda: mx.sum(x)

    def argmax():
        x = normal((1, VOCAB), mx.float32)
        return lambda: mx.argmax(x, axis=-1)

    case("sum", "f32", str(ELEMENTS), total)
    case("argmax", "f32", f"1x{VOCAB}", argmax)


# The sampler chain of mlx-metal's llm/sampler.rs, op for op: mlx_lm's
# sample_utils (apply_top_p, apply_min_p, apply_top_k, categorical_sampling)
# without mx.compile, after generate_step's logits - logsumexp.


def _neg_inf(dtype):
    return mx.array(-float("inf"), dtype)


def _top_p(logprobs, top_p):
    sorted_lp = mx.sort(logprobs, axis=-1)
    probs = mx.exp(sorted_lp.astype(mx.float32))
    mass_above = mx.cumsum(probs, axis=-1, reverse=True, inclusive=False)
    total = mass_above[..., :1] + probs[..., :1]
    dropped = (mass_above >= total * top_p).astype(mx.int32).sum(axis=-1, keepdims=True)
    threshold = mx.take_along_axis(sorted_lp, dropped, axis=-1)
    return mx.where(logprobs < threshold, _neg_inf(logprobs.dtype), logprobs)


def _min_p(logprobs, min_p):
    floor = mx.max(logprobs, axis=-1, keepdims=True) + math.log(min_p)
    return mx.where(logprobs < floor, _neg_inf(logprobs.dtype), logprobs)


def _top_k(logprobs, top_k):
    vocab = logprobs.shape[-1]
    if top_k >= vocab:
        return logprobs
    drop = mx.argpartition(-logprobs, kth=top_k - 1, axis=-1)[..., top_k:]
    fill = mx.broadcast_to(_neg_inf(logprobs.dtype), drop.shape)
    return mx.put_along_axis(logprobs, drop, fill, axis=-1)


def make_sampler(temp=0.0, top_p=1.0, min_p=0.0, top_k=0):
    def sample(logits):
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if temp <= 0:
            return mx.argmax(logprobs, axis=-1)
        if 0 < top_p < 1:
            logprobs = _top_p(logprobs, top_p)
        if min_p != 0:
            logprobs = _min_p(logprobs, min_p)
        if top_k > 0:
            logprobs = _top_k(logprobs, top_k)
        scaled = logprobs * (1.0 / temp)
        return mx.random.categorical(scaled, axis=-1).astype(mx.uint32)

    return sample


def sampler_cases():
    chains = [
        ("sampler_greedy", {}),
        ("sampler_top_k", {"temp": 1.0, "top_k": 50}),
        ("sampler_top_p", {"temp": 1.0, "top_p": 0.9}),
        ("sampler_combined", {"temp": 0.7, "top_p": 0.9, "min_p": 0.05, "top_k": 50}),
    ]
    for op, settings in chains:

        def setup(settings=settings):
            logits = normal((1, VOCAB), mx.float32) * 3.0
            mx.eval(logits)
            sampler = make_sampler(**settings)
            return lambda: sampler(logits)

        case(op, "f32", f"1x{VOCAB}", setup)


def chain_case():
    def inputs():
        x = normal((16,), mx.float32)
        a, m = mx.full((16,), 0.5), mx.full((16,), 0.99)
        mx.eval(a, m)
        return x, a, m

    def graph(x, a, m):
        y = x
        for i in range(100):
            y = y + a if i % 2 == 0 else y * m
        return y

    def setup():
        x, a, m = inputs()
        return lambda: graph(x, a, m)

    case("chain100", "f32", "16", setup)
    # The same graph built and dropped, never evaluated.
    case("chain100_build", "f32", "16", setup, evaluate=False)


def decoder_layer_case():
    """mlx_lm's own Qwen3 block (the bench model's layer size, bf16 random
    weights) on one token with LAYER_CONTEXT positions in a fresh KVCache."""
    state = {}

    def setup():
        from mlx_lm.models.cache import KVCache
        from mlx_lm.models.qwen3 import ModelArgs, TransformerBlock

        args = ModelArgs(
            model_type="qwen3",
            hidden_size=LAYER_HIDDEN,
            num_hidden_layers=1,
            intermediate_size=LAYER_MLP,
            num_attention_heads=LAYER_HEADS,
            rms_norm_eps=1e-6,
            vocab_size=VOCAB,
            num_key_value_heads=LAYER_KV_HEADS,
            max_position_embeddings=40960,
            head_dim=LAYER_HEAD_DIM,
            tie_word_embeddings=True,
            rope_theta=1_000_000.0,
        )
        block = TransformerBlock(args)
        block.set_dtype(mx.bfloat16)
        mx.eval(block.parameters())
        x = normal((1, 1, LAYER_HIDDEN), mx.bfloat16)
        state["KVCache"] = KVCache
        return lambda cache: block(x, mask=None, cache=cache)

    def fresh_cache():
        shape = (1, LAYER_KV_HEADS, LAYER_CONTEXT, LAYER_HEAD_DIM)
        k, v = normal(shape, mx.bfloat16), normal(shape, mx.bfloat16)
        cache = state["KVCache"]()
        cache.update_and_fetch(k, v)
        mx.eval(cache.keys, cache.values)
        return cache

    case(
        "decoder_layer",
        "bf16",
        f"1x1x{LAYER_HIDDEN}_ctx{LAYER_CONTEXT}",
        setup,
        per_iteration=fresh_cache,
    )


def all_cases():
    matmul_cases()
    softmax_cases()
    elementwise_cases()
    norm_cases()
    attention_cases()
    layer_cases()
    reduction_cases()
    sampler_cases()
    chain_case()
    decoder_layer_case()
    return CASES


def timer(c, run):
    """Returns `time(iters)`: seconds taken by `iters` timed calls."""
    if not c.evaluate:

        def timed(iters):
            start = time.perf_counter()
            for _ in range(iters):
                run()
            return time.perf_counter() - start

    elif c.per_iteration is None:

        def timed(iters):
            start = time.perf_counter()
            for _ in range(iters):
                mx.eval(run())
            return time.perf_counter() - start

    else:

        def timed(iters):
            total = 0.0
            for _ in range(iters):
                state = c.per_iteration()
                start = time.perf_counter()
                out = run(state)
                mx.eval(out)
                total += time.perf_counter() - start
                del out, state
            return total

    return timed


def measure(c, samples, warm_up, measurement):
    run = c.setup()
    timed = timer(c, run)
    timed(1)  # untimed first call: kernel compilation, first allocations
    elapsed, done, iters = 0.0, 0, 1
    while True:
        elapsed += timed(iters)
        done += iters
        if elapsed > warm_up:
            break
        iters *= 2
    per_call = elapsed / done
    iters = max(1, math.ceil(measurement / (samples * per_call)))
    times = sorted(timed(iters) / iters for _ in range(samples))
    mid = len(times) // 2
    median = times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2
    return {"id": c.id, "median_ns": median * 1e9, "samples": samples, "iters": iters}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ids", nargs="*", help="cases to run (default: all)")
    p.add_argument("--list", action="store_true", help="print the case names")
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--warm-up", type=float, default=0.5, help="seconds")
    p.add_argument("--measurement", type=float, default=1.5, help="seconds")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args()
    cases = all_cases()
    if args.list:
        for c in cases:
            print(c.id)
        return 0
    by_id = {c.id: c for c in cases}
    unknown = [i for i in args.ids if i not in by_id]
    if unknown:
        print(f"bench_ops.py: unknown case(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.samples < 2 or args.warm_up < 0 or args.measurement <= 0:
        print("bench_ops.py: --samples must be >= 2, times positive", file=sys.stderr)
        return 2
    chosen = [by_id[i] for i in args.ids] if args.ids else cases
    if not args.quiet:
        print(f"bench_ops.py: MLX {mx.__version__} on {mx.default_device()}", file=sys.stderr)
    mx.random.seed(0)
    failed = 0
    for c in chosen:
        if not args.quiet:
            print(f"  {c.id}", file=sys.stderr, flush=True)
        try:
            record = measure(c, args.samples, args.warm_up, args.measurement)
        except Exception as e:  # reported per case; the others still run
            failed += 1
            record = {"id": c.id, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(record), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
