"""Times mlx_lm on a model: one warm-up, then RUNS timed generations of
MAX_TOKENS tokens (greedy) from the prompt read on stdin. Prints one JSON
line per timed run with mlx_lm's own prompt_tps and generation_tps.

Usage: python bench_mlx_lm.py MODEL_DIR MAX_TOKENS RUNS < prompt.txt
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mlx_lm import load, stream_generate  # noqa: E402


def main():
    model_dir, max_tokens, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    prompt = sys.stdin.read()
    model, tokenizer = load(model_dir)
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
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
