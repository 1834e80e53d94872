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

import sys

from make_bench_model import save_random_model
from mlx_lm.models import gemma3_text

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
    model = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(CONFIG))
    # Gemma's norms scale by 1 + w: stored weights around 0
    save_random_model(model, CONFIG, sys.argv[1], sys.argv[2], norms_at_one=False)


if __name__ == "__main__":
    main()
