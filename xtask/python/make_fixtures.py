"""Reference fixtures for the project's tests, made with mlx_lm itself.

For each architecture (llama, qwen3, gemma3_text, qwen2, mistral, phi3,
gemma2) this writes a small
random-weight model directory (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json with a Jinja chat template), plus
4-bit and 8-bit quantised copies made by `mlx_lm.convert`, and next to each
a `reference.json` recording what mlx_lm computes on it: prompt token ids,
last-position float32 logits and greedy token ids, for a raw prompt and for
a chat conversation.

Usage: python make_fixtures.py OUT_DIR
Nothing is downloaded: the tokenizer is a byte-level BPE trained on Python's
own standard-library sources found on this machine.
"""

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402
from mlx_lm import load  # noqa: E402
from mlx_lm.convert import convert  # noqa: E402
from mlx_lm.generate import batch_generate, generate_step  # noqa: E402
from mlx_lm.sample_utils import make_sampler  # noqa: E402
from mlx_lm.utils import save_config, save_model  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

VOCAB_SIZE = 640
MAX_TOKENS = 40
RAW_PROMPT = "The quick brown fox said: def main(): return 'café'"
CHAT = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What does a parser do with text?"},
]
# Multi-byte text so that the vocabulary has split UTF-8 characters.
EXTRA_TEXT = (
    "café naïve façade jalapeño über straße smörgåsbord — “quotes” ‘single’ … "
    "日本語のテキスト 中文文本 한국어 텍스트 Ελληνικά кириллица עברית العربية "
    "emoji 🙂 🚀 ✨ math ∑ ∫ √ ≤ ≥ ≠ ∞ π µ °C € £ ¥\n"
) * 20

LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

ARCHS = {
    "llama": {
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "extra_eos": ["<|end_of_text|>"],
        "add_bos": True,
        "template": LLAMA_TEMPLATE,
        "config": {
            "model_type": "llama",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            "max_position_embeddings": 1024,
            "tie_word_embeddings": False,
        },
    },
    "qwen3": {
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|im_end|>",
        "extra_eos": ["<|endoftext|>"],
        "add_bos": False,
        "template": QWEN_TEMPLATE,
        "config": {
            "model_type": "qwen3",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 1024,
            "tie_word_embeddings": True,
        },
    },
    "gemma3_text": {
        "specials": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        "bos": "<bos>",
        "eos": "<eos>",
        "extra_eos": ["<end_of_turn>"],
        "add_bos": True,
        "template": GEMMA_TEMPLATE,
        "config": {
            "model_type": "gemma3_text",
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "query_pre_attn_scalar": 16,
            "sliding_window": 8,
            "sliding_window_pattern": 2,
            "max_position_embeddings": 1024,
        },
    },
}


PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Added after the first three so that their seeds, and so their weights, stay
# the same.
ARCHS.update(
    {
        "qwen2": {
            **ARCHS["qwen3"],
            "config": {
                "model_type": "qwen2",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "rms_norm_eps": 1e-6,
                "rope_theta": 1000000.0,
                "max_position_embeddings": 1024,
                "tie_word_embeddings": False,
            },
        },
        "mistral": {
            **ARCHS["llama"],
            # mlx_lm runs mistral as llama, which honours windows through
            # layer_types (and needs one full-attention layer)
            "module": "llama",
            "config": {
                "model_type": "mistral",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 1,
                "rms_norm_eps": 1e-5,
                "rope_theta": 1000000.0,
                "sliding_window": 16,
                "layer_types": ["sliding_attention", "full_attention"],
                "max_position_embeddings": 1024,
                "tie_word_embeddings": False,
            },
        },
        "phi3": {
            "specials": ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
            "bos": None,
            "eos": "<|end|>",
            "extra_eos": ["<|endoftext|>"],
            "add_bos": False,
            "template": PHI3_TEMPLATE,
            "config": {
                "model_type": "phi3",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "rope_scaling": {
                    "type": "longrope",
                    "long_factor": [1.0, 1.5, 3.0, 7.0],
                    "short_factor": [1.0, 1.1, 1.2, 1.3],
                },
                "max_position_embeddings": 8192,
                "original_max_position_embeddings": 1024,
                "tie_word_embeddings": False,
            },
        },
        "gemma2": {
            **ARCHS["gemma3_text"],
            "config": {
                "model_type": "gemma2",
                "hidden_size": 64,
                "num_hidden_layers": 4,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0,
                "attn_logit_softcapping": 50.0,
                "final_logit_softcapping": 30.0,
                "query_pre_attn_scalar": 16,
                "max_position_embeddings": 1024,
            },
        },
    }
)


def training_text():
    """Python standard-library sources (sorted, so training is repeatable)."""
    stdlib = Path(os.__file__).parent
    names = ["textwrap.py", "argparse.py", "difflib.py", "json/decoder.py", "json/encoder.py", "string.py", "shlex.py"]
    texts = [(stdlib / n).read_text(encoding="utf-8") for n in names if (stdlib / n).is_file()]
    texts.append(EXTRA_TEXT)
    return texts


def make_tokenizer(arch, spec, out):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=spec["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    if spec["add_bos"]:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["specials"][0],
    )
    fast.save_pretrained(str(out))
    # The chat template lives in tokenizer_config.json, as in most published models.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = spec["template"]
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return tok


def init_weights(model, arch, seed):
    """Normal weights (std 0.15) so that greedy answers are decisive; norms
    near their neutral value."""
    mx.random.seed(seed)
    new = []
    for name, p in tree_flatten(model.parameters()):
        noise = mx.random.normal(p.shape) * 0.15
        if "norm" in name:
            value = noise if arch in ("gemma3_text", "gemma2") else 1.0 + noise
        else:
            value = noise
        new.append((name, value.astype(mx.float32)))
    model.update(tree_unflatten(new))
    mx.eval(model.parameters())


def make_model(arch, spec, out, seed):
    import importlib

    out.mkdir(parents=True)
    tok = make_tokenizer(arch, spec, out)
    config = dict(spec["config"])
    config["vocab_size"] = tok.get_vocab_size()
    eos_ids = [tok.token_to_id(spec["eos"])] + [tok.token_to_id(t) for t in spec["extra_eos"]]
    config["eos_token_id"] = eos_ids
    if spec["bos"]:
        config["bos_token_id"] = tok.token_to_id(spec["bos"])
    module = importlib.import_module(f"mlx_lm.models.{spec.get('module', arch)}")
    model = module.Model(module.ModelArgs.from_dict(config))
    init_weights(model, arch, seed)
    save_model(out, model)
    (out / "model.safetensors.index.json").unlink(missing_ok=True)
    save_config(config, out / "config.json")


def greedy(model, prompt_ids, eos_ids):
    tokens = []
    for token, _ in generate_step(mx.array(prompt_ids), model, max_tokens=MAX_TOKENS, sampler=make_sampler(0.0)):
        token = int(token)
        if token in eos_ids:
            return tokens, "eos"
        tokens.append(token)
    return tokens, "max_tokens"


def stream_text(tokenizer, ids):
    """The text mlx_lm's streaming detokenizer produces for `ids` (it may
    differ from a full decode, e.g. by trimming a leading space)."""
    detok = tokenizer.detokenizer
    detok.reset()
    for i in ids:
        detok.add_token(i)
    detok.finalize()
    return detok.text


def record(model_dir):
    model, tokenizer, config = load(str(model_dir), return_config=True)
    eos_ids = sorted(set(int(i) for i in tokenizer.eos_token_ids))
    bos = tokenizer.bos_token
    add_special = bos is None or not RAW_PROMPT.startswith(bos)
    raw_ids = tokenizer.encode(RAW_PROMPT, add_special_tokens=add_special)
    logits = model(mx.array(raw_ids)[None])[0, -1].astype(mx.float32)
    raw_greedy, raw_reason = greedy(model, raw_ids, eos_ids)
    chat_text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    chat_ids = tokenizer.encode(chat_text, add_special_tokens=False)
    chat_logits = model(mx.array(chat_ids)[None])[0, -1].astype(mx.float32)
    chat_greedy, chat_reason = greedy(model, chat_ids, eos_ids)
    # A batch mixing short and long prompts (the raw prompt three times over
    # is longer than Gemma's window), through mlx_lm's batch_generate.
    short_ids = tokenizer.encode("Hi", add_special_tokens=True)
    long_ids = tokenizer.encode(" ".join([RAW_PROMPT] * 3), add_special_tokens=add_special)
    batch_prompts = [raw_ids, chat_ids, short_ids, long_ids]
    try:
        batch = batch_generate(model, tokenizer, batch_prompts, max_tokens=MAX_TOKENS, return_token_ids=True)
        batch_ids = [[int(t) for t in ids if int(t) not in eos_ids] for ids in batch.token_ids]
        batch_source = "batch_generate"
    except ValueError as e:
        # mlx_lm 0.32.2's Gemma 2 attention cannot broadcast a batch mask
        # over grouped query heads; its single-prompt answers stand in.
        batch_ids = [greedy(model, p, eos_ids)[0] for p in batch_prompts]
        batch_source = f"generate_step (batch_generate failed: {e})"
    ref = {
        "model_type": config["model_type"],
        "batch": {"prompt_ids": batch_prompts, "greedy_ids": batch_ids, "source": batch_source},
        "quantization": config.get("quantization"),
        "eos_token_ids": eos_ids,
        "max_tokens": MAX_TOKENS,
        "raw": {
            "prompt": RAW_PROMPT,
            "prompt_ids": raw_ids,
            "logits": logits.tolist(),
            "greedy_ids": raw_greedy,
            "greedy_text": tokenizer.decode(raw_greedy),
            "stream_text": stream_text(tokenizer, raw_greedy),
            "stop_reason": raw_reason,
        },
        "chat": {
            "messages": CHAT,
            "prompt_text": chat_text,
            "prompt_ids": chat_ids,
            "logits": chat_logits.tolist(),
            "greedy_ids": chat_greedy,
            "greedy_text": tokenizer.decode(chat_greedy),
            "stream_text": stream_text(tokenizer, chat_greedy),
            "stop_reason": chat_reason,
        },
    }
    (model_dir / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False))
    return ref


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_fixtures.py OUT_DIR")
    out = Path(sys.argv[1])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    summary = {}
    for seed, (arch, spec) in enumerate(ARCHS.items()):
        base = out / arch
        make_model(arch, spec, base, seed)
        dirs = [base]
        for bits in (4, 8):
            q = out / f"{arch}-{bits}bit"
            convert(str(base), mlx_path=str(q), quantize=True, q_group_size=64, q_bits=bits)
            dirs.append(q)
        for d in dirs:
            ref = record(d)
            summary[d.name] = {
                "raw_tokens": len(ref["raw"]["greedy_ids"]),
                "raw_stop": ref["raw"]["stop_reason"],
                "chat_tokens": len(ref["chat"]["greedy_ids"]),
                "chat_stop": ref["chat"]["stop_reason"],
            }
    (out / "index.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
