"""One load level against an OpenAI-compatible server, for
`cargo xtask bench serve`: CONCURRENCY streaming chat clients send
REQUESTS requests in all (greedy, MAX_TOKENS each) and one JSON line
reports the aggregate generation tok/s and the TTFT percentiles.

argv: BASE_URL MODEL CONCURRENCY REQUESTS MAX_TOKENS
"""
import asyncio
import json
import sys
import time

import openai

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "List some uses of copper in everyday life.",
    "Describe a walk through a forest in autumn.",
    "What makes bread rise?",
    "Summarise the rules of chess for a child.",
    "Why is the sky blue?",
    "Give advice to someone learning to cook.",
]


def percentile(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


async def main():
    base, model, conc, total, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    # mlx_lm.server listens with a short backlog: a refused connection is retried
    # (its time counts in the TTFT).
    client = openai.AsyncOpenAI(base_url=base, api_key="bench", max_retries=8, timeout=600)
    ttfts, tokens = [], [0]
    queue = list(range(total))

    async def one(i):
        start = time.perf_counter()
        first = None
        n = 0
        usage = None
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.content:
                    if first is None:
                        first = time.perf_counter() - start
                    n += 1
        ttfts.append(first if first is not None else time.perf_counter() - start)
        tokens[0] += usage.completion_tokens if usage is not None else n

    async def worker():
        while queue:
            await one(queue.pop())

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    wall = time.perf_counter() - start
    print(json.dumps({
        "concurrency": conc, "requests": total, "tokens": tokens[0], "wall_s": wall,
        "tok_per_s": tokens[0] / wall, "ttft_p50": percentile(ttfts, 50), "ttft_p95": percentile(ttfts, 95),
    }))


asyncio.run(main())
