"""Times mlx_lm on a model: one warm-up, then RUNS timed generations of
MAX_TOKENS tokens (greedy) from the prompt read on stdin. Prints one JSON
line per timed run with mlx_lm's own prompt_tps and generation_tps, the
dtype it computed in and the BLAS its MLX loaded.

DTYPE is "model" (default: the weights as stored, what mlx_lm does) or, as
mlx-infer's --dtype, "auto" (bfloat16/float16 weights cast to float32 when
MLX computes on the CPU), "float32", "bfloat16" or "float16"; the cast is
`Module.set_dtype` on the loaded model (quantised layers' scales included).

Usage: python bench_mlx_lm.py MODEL_DIR MAX_TOKENS RUNS [DTYPE] < prompt.txt
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402
from mlx_lm import load, stream_generate  # noqa: E402

NAMES = {mx.float32: "float32", mx.bfloat16: "bfloat16", mx.float16: "float16"}


def stored_dtype(model):
    sizes = {}
    for _, p in tree_flatten(model.parameters()):
        if mx.issubdtype(p.dtype, mx.floating):
            sizes[p.dtype] = sizes.get(p.dtype, 0) + p.size
    return max(sizes, key=sizes.get) if sizes else None


def target_dtype(requested, stored):
    if requested == "model":
        return None
    if requested == "auto":
        on_cpu = mx.default_device().type == mx.DeviceType.cpu
        return mx.float32 if on_cpu and stored in (mx.bfloat16, mx.float16) else None
    if requested in ("float32", "bfloat16", "float16"):
        return getattr(mx, requested)
    sys.exit(f"unknown dtype {requested!r}")


def blas():
    try:
        with open("/proc/self/maps") as maps:
            names = {os.path.basename(line.split()[-1]) for line in maps if "/" in line}
    except OSError:
        return "Accelerate" if sys.platform == "darwin" else "?"
    if any(n.startswith("libopenblas") for n in names):
        return "OpenBLAS"
    if any(n.startswith("libblas-") for n in names):
        return "reference"
    return "?"


def main():
    model_dir, max_tokens, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    requested = sys.argv[4] if len(sys.argv) > 4 else "model"
    prompt = sys.stdin.read()
    model, tokenizer = load(model_dir)
    stored = stored_dtype(model)
    target = target_dtype(requested, stored)
    if target is not None:
        model.set_dtype(target)
        mx.eval(model.parameters())
    computed = NAMES.get(target if target is not None else stored, "?")
    for _ in stream_generate(model, tokenizer, prompt, max_tokens=4):
        pass
    for _ in range(runs):
        last = None
        for last in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
            pass
        print(
            json.dumps(
                {
                    "prompt_tokens": last.prompt_tokens,
                    "generated_tokens": last.generation_tokens,
                    "prompt_tps": last.prompt_tps,
                    "generation_tps": last.generation_tps,
                    "peak_memory_bytes": int(last.peak_memory * 1e9),
                    "compute_dtype": computed,
                    "blas": blas(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
