"""mlx_lm's dataset processing and batching, for the Rust parity tests.

Usage: python dataset_reference.py MODEL DATA_DIR MASK_PROMPT BATCH MAX_LEN

Prints one JSON object: the processed train examples ([tokens, offset])
and every batch of one pass of iterate_batches (ids and lengths), sorted.
"""

import json
import sys
import types

from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset
from mlx_lm.tuner.trainer import iterate_batches
from mlx_lm.utils import load_tokenizer
from pathlib import Path


def main():
    model, data, mask, batch, max_len = sys.argv[1:6]
    tok = load_tokenizer(Path(model))
    cfg = types.SimpleNamespace(mask_prompt=mask == "1")
    train, _, _ = load_local_dataset(Path(data), tok, cfg)
    train = CacheDataset(train)
    examples = [list(map(int, train[i][0])) + [int(train[i][1])] for i in range(len(train))]
    batches = []
    for ids, lengths in iterate_batches(train, int(batch), int(max_len)):
        batches.append([ids.tolist(), lengths.tolist()])
    batches.sort()
    print(json.dumps({"examples": examples, "batches": batches}))


if __name__ == "__main__":
    main()
