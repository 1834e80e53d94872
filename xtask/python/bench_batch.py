"""mlx_lm's side of `cargo xtask bench classify` and `cargo xtask bench batch`.

classify: the next-token distribution after each sentence, two ways:
  - `batch_generate(max_tokens=1)`, what mlx_lm offers for it;
  - a raw batched forward written directly against mlx_lm's model
    (left-padded batches with mlx_lm's batch caches, last-position logits,
    log-softmax and argmax), the best mlx_lm's pieces can do.
batch: greedy completions of all sentences through `batch_generate`.

Usage: python bench_batch.py MODEL_DIR classify|batch SENTENCES_FILE BATCH_SIZE MAX_TOKENS RUN_INDEX
Prints one JSON line per measured way (sentences/s, generated tok/s, peak memory).
"""

import json
import sys
import time

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import batch_generate
from mlx_lm.models.cache import BatchKVCache, BatchRotatingKVCache, RotatingKVCache


def batch_caches(model, left):
    made = model.make_cache() if hasattr(model, "make_cache") else [None] * len(model.layers)
    return [
        BatchRotatingKVCache(c.max_size, left) if isinstance(c, RotatingKVCache) else BatchKVCache(left)
        for c in made
    ]


def raw_forward(model, prompts, batch_size):
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    top = [0] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        left = [width - len(prompts[i]) for i in rows]
        tokens = mx.array([[0] * l + prompts[i] for i, l in zip(rows, left)])
        logits = model(tokens, cache=batch_caches(model, left))[:, -1, :].astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        ids = mx.argmax(logprobs, axis=-1)
        mx.eval(ids, logprobs)
        for i, t in zip(rows, ids.tolist()):
            top[i] = t
    return top


def main():
    model_dir, mode, sentences_file, batch_size, max_tokens = sys.argv[1:6]
    batch_size, max_tokens = int(batch_size), int(max_tokens)
    model, tokenizer = load(model_dir)
    sentences = [line.rstrip("\n") for line in open(sentences_file) if line.strip()]
    bos = tokenizer.bos_token
    prompts = [tokenizer.encode(s, add_special_tokens=bos is None or not s.startswith(bos)) for s in sentences]
    n = len(prompts)
    ways = []
    if mode == "classify":
        ways.append(("mlx_lm batch_generate(max_tokens=1)", lambda: batch_generate(
            model, tokenizer, prompts, max_tokens=1, completion_batch_size=batch_size, prefill_batch_size=batch_size)))
        ways.append(("mlx_lm raw batched forward", lambda: raw_forward(model, prompts, batch_size)))
    else:
        ways.append(("mlx_lm batch_generate", lambda: batch_generate(
            model, tokenizer, prompts, max_tokens=max_tokens, completion_batch_size=batch_size,
            prefill_batch_size=batch_size, return_token_ids=True)))
    for name, run in ways:
        mx.reset_peak_memory()
        started = time.perf_counter()
        out = run()
        secs = time.perf_counter() - started
        generated = sum(len(ids) for ids in out.token_ids) if mode == "batch" else 0
        print(json.dumps({
            "way": name,
            "sentences_per_s": n / secs,
            "generation_tps": generated / secs,
            "seconds": secs,
            "peak_memory_bytes": mx.get_peak_memory(),
        }), flush=True)


if __name__ == "__main__":
    main()
