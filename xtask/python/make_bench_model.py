"""A Qwen3-0.6B-shaped bf16 model with random weights, for benchmarks.

28 layers, hidden 1024, 16 query / 8 key-value heads of 128, MLP 3072,
vocabulary 151936, tied embeddings: the shapes of Qwen3-0.6B. The tokenizer
is the qwen3 fixture's (its ids are a subset of the vocabulary); the
embedding rows of the ids it cannot decode (and of its special tokens) are
zero, so the model only ever picks tokens that are text and a server
streams text, as with a real model.

Usage: python make_bench_model.py FIXTURE_TOKENIZER_DIR OUT_DIR [KEY=VALUE ...]

KEY=VALUE pairs replace fields of the config (integers), for larger models
of the same family, e.g. `hidden_size=8192 num_hidden_layers=56
intermediate_size=28672 num_attention_heads=64` (about 49B parameters).
"""

import json
import shutil
import sys
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import qwen3
from mlx_lm.utils import save_config, save_model

CONFIG = {
    "model_type": "qwen3",
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "intermediate_size": 3072,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-6,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}


def text_rows(tokenizer_json, vocab_size):
    """`[vocab_size, 1]`: 1 for the ids the tokenizer decodes to text (its
    vocabulary, special tokens excepted), 0 for the others."""
    t = json.loads(Path(tokenizer_json).read_text())
    special = {a["id"] for a in t.get("added_tokens", []) if a.get("special")}
    keep = [0.0] * vocab_size
    for i in t["model"]["vocab"].values():
        if i < vocab_size and i not in special:
            keep[i] = 1.0
    return mx.array(keep)[:, None]


def save_random_model(model, config, src, out, norms_at_one=True):
    """Gives `model` seeded random bf16 weights (scale 0.02; norms around 1
    when `norms_at_one`, for families that multiply by the stored weight;
    output rows of ids that SRC's tokenizer cannot decode to text at zero,
    so greedy decoding picks text) and writes it with `config` and SRC's
    tokenizer files to OUT, through a temporary folder so OUT is complete
    or absent."""
    src, out = Path(src), Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    mx.random.seed(0)
    rows = text_rows(src / "tokenizer.json", config["vocab_size"])
    params = []
    for name, p in tree_flatten(model.parameters()):
        value = mx.random.normal(p.shape) * 0.02
        if norms_at_one and "norm" in name:
            value = value + 1.0
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            value = value * rows
        params.append((name, value.astype(mx.bfloat16)))
    model.update(tree_unflatten(params))
    mx.eval(model.parameters())
    save_model(tmp, model)
    (tmp / "model.safetensors.index.json").unlink(missing_ok=True)
    save_config(config, tmp / "config.json")
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(src / f, tmp / f)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def main():
    config = dict(CONFIG)
    config["eos_token_id"] = [151645]
    for pair in sys.argv[3:]:
        key, value = pair.split("=", 1)
        if key not in CONFIG:
            sys.exit(f"unknown config field {key}")
        config[key] = int(value)
    model = qwen3.Model(qwen3.ModelArgs.from_dict(config))
    save_random_model(model, config, sys.argv[1], sys.argv[2])


if __name__ == "__main__":
    main()
