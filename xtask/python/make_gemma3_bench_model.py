"""A Gemma3-1B-shaped bf16 model with random weights, for the batching
benchmarks on a GPU (classification at batch 512 wants a model of real
size; the CPU benchmarks use the small default model).

26 layers, hidden 1152, 4 query / 1 key-value heads of 256, MLP 6912,
vocabulary 262144, sliding window 512 on five layers of six, tied
embeddings: the shapes of Gemma-3-1B. Built with mlx_lm's own
`gemma3_text` class. The tokenizer is copied from TOKENIZER_DIR (its ids
must be below 262144).

Usage: python make_gemma3_bench_model.py TOKENIZER_DIR OUT_DIR
"""

import shutil
import sys
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import gemma3_text
from mlx_lm.utils import save_config, save_model

CONFIG = {
    "model_type": "gemma3_text",
    "hidden_size": 1152,
    "num_hidden_layers": 26,
    "intermediate_size": 6912,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "rms_norm_eps": 1e-6,
    "vocab_size": 262144,
    "sliding_window": 512,
    "sliding_window_pattern": 6,
    "query_pre_attn_scalar": 256,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}


def main():
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(CONFIG))
    mx.random.seed(0)
    params = [
        (name, (mx.random.normal(p.shape) * 0.02).astype(mx.bfloat16))
        for name, p in tree_flatten(model.parameters())
    ]
    model.update(tree_unflatten(params))
    mx.eval(model.parameters())
    save_model(tmp, model)
    (tmp / "model.safetensors.index.json").unlink(missing_ok=True)
    save_config(CONFIG, tmp / "config.json")
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        if (src / f).exists():
            shutil.copy(src / f, tmp / f)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


if __name__ == "__main__":
    main()
