"""Bridge between the Rust `mlxlm` backend and Python's mlx_lm.

Speaks JSON lines: one request per line on stdin, replies on stdout.

  {"op": "load", "path": DIR, "dtype": "auto"|"model"|"float32"|"bfloat16"|"float16"}
      -> {"ok": true, "info": {...}} | {"error": MESSAGE}
  {"op": "encode", "prompt": TEXT} | {"op": "encode", "messages": [...]}
      -> {"ids": [ID...]}
  {"op": "generate", "ids": [ID...], "options": {...}}
  {"op": "generate", "prompt": TEXT, "options": {...}}
  {"op": "generate", "messages": [{"role", "content"}...], "options": {...}}
      -> {"token": ID, "text": TEXT} ... then
         {"done": true, "reason": "eos"|"max_tokens"|"cancelled", "prompt_tokens": N,
          "generated_tokens": N, "prompt_tps": X, "generation_tps": X,
          "peak_memory_bytes": N}
       | {"error": MESSAGE}
  {"op": "classify", "inputs": [{"prompt"} | {"messages"}...], "top_k": K, "labels": [...]}
                     -> {"results": [{"top": [[id, text, logprob]...], "labels": [logprob...], "prompt_tokens"}...]}
  {"op": "cancel"}   (while generating, prefill included) -> the stream ends
                     with reason "cancelled"
  {"op": "close"}    -> the process exits

The process never outlives its parent: it exits when its stdin closes or
when it is re-parented (the parent died, whatever the signal).

With "cancellable": true in the options the prompt is computed in passes
sized to take about a quarter of a second each (from 64 tokens, as the
native backend does), and a cancel request is seen between passes. Non-finite logits end the
stream with an error. The text of a generation is what the tokenizer's
decode gives for its ids: mlx_lm's streaming BPE detokenizer drops the
first token's leading space, which is put back here so that prompt and
completion join exactly and both backends give the same text.

Raw prompts are encoded as mlx_lm.stream_generate does (special tokens added
unless the prompt already starts with BOS); chat messages are rendered with
the tokenizer's chat template (generation prompt added) and encoded without
adding special tokens again. The load's dtype follows the Rust side's
`ComputeDtype`: the model's floating-point parameters (quantised layers'
scales and biases included) are cast with `Module.set_dtype`; "auto" casts
bfloat16/float16 weights to float32 when MLX computes on the CPU. Each token is sent once the next one exists (or
the stream ends), so that its text is final: the streaming detokenizer may
still be holding part of a character or a space.
"""

import json
import math
import os
import queue
import signal
import sys
import threading
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Ctrl-C belongs to the Rust program, which cancels through the protocol.
signal.signal(signal.SIGINT, signal.SIG_IGN)

_out = sys.stdout
sys.stdout = sys.stderr  # library prints must not corrupt the protocol


def send(obj):
    _out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    _out.flush()


requests = queue.Queue()


def read_stdin():
    for line in sys.stdin:
        line = line.strip()
        if line:
            requests.put(line)
    # The parent closed the channel (it ended or died): nothing more can
    # be asked or answered, so stop at once, even mid-computation.
    os._exit(0)


def watch_parent():
    """Exits as soon as the parent process is gone (re-parented)."""
    parent = os.getppid()
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.25)


class Cancelled(Exception):
    """A cancel request arrived during the prefill."""


STATE = {}


DTYPE_NAMES = ("auto", "model", "float32", "bfloat16", "float16")


def weights_dtype(model, mx):
    """The floating-point type holding most of the parameters' elements."""
    from mlx.utils import tree_flatten

    sizes = {}
    for _, p in tree_flatten(model.parameters()):
        if mx.issubdtype(p.dtype, mx.floating):
            sizes[p.dtype] = sizes.get(p.dtype, 0) + p.size
    return max(sizes, key=sizes.get) if sizes else None


def compute_dtype(requested, stored, mx):
    """The type to cast floating-point parameters to, or None to keep them."""
    if requested not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {requested!r} (expected one of: {', '.join(DTYPE_NAMES)})")
    if requested == "model":
        return None
    if requested == "auto":
        on_cpu = mx.default_device().type == mx.DeviceType.cpu
        return mx.float32 if on_cpu and stored in (mx.bfloat16, mx.float16) else None
    return getattr(mx, requested)


def dtype_name(dtype, mx):
    names = {mx.float32: "float32", mx.bfloat16: "bfloat16", mx.float16: "float16"}
    return names.get(dtype, str(dtype).removeprefix("mlx.core.")) if dtype is not None else None


def blas_in_use():
    """Which BLAS this process's MLX loaded, from /proc/self/maps (Linux)."""
    if sys.platform == "darwin":
        return "Accelerate"
    try:
        with open("/proc/self/maps") as maps:
            files = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return None
    for f in sorted(files):
        name = os.path.basename(f)
        if name.startswith("libopenblas"):
            version = name.split("-r", 1)[1].removesuffix(".so") if "-r" in name else ""
            text = f"OpenBLAS {version}".strip()
            try:
                import ctypes

                threads = ctypes.CDLL(f).openblas_get_num_threads()
                text += f", {threads} thread{'s' if threads != 1 else ''}"
            except (OSError, AttributeError):
                pass
            return text
    for f in files:
        if os.path.basename(f).startswith("libblas-") and os.path.dirname(f).endswith(".libs"):
            return "reference (MLX's bundled netlib BLAS, slow)"
    return None


def load(path, dtype="auto", adapter_path=None):
    import mlx.core as mx
    from mlx_lm import load as mlx_load

    model, tokenizer, config = mlx_load(
        path, adapter_path=adapter_path, return_config=True
    )
    stored = weights_dtype(model, mx)
    target = compute_dtype(dtype, stored, mx)
    if target is not None:
        model.set_dtype(target)
        mx.eval(model.parameters())
    STATE.update(model=model, tokenizer=tokenizer, config=config, mx=mx)
    text = config.get("text_config", config)
    quant = config.get("quantization") or {}
    return {
        "model_type": config.get("model_type", ""),
        "vocab_size": text.get("vocab_size"),
        "num_layers": text.get("num_hidden_layers"),
        "hidden_size": text.get("hidden_size"),
        "quantization_bits": quant.get("bits"),
        "eos_token_ids": sorted(int(i) for i in tokenizer.eos_token_ids),
        "weights_dtype": dtype_name(stored, mx),
        "compute_dtype": dtype_name(target if target is not None else stored, mx),
        "blas": blas_in_use(),
        "context_length": text.get("max_position_embeddings"),
    }


def encode(req):
    if "ids" in req:
        return [int(i) for i in req["ids"]]
    tokenizer = STATE["tokenizer"]
    if "messages" in req:
        if not tokenizer.has_chat_template:
            raise ValueError("this model has no chat template")
        text = tokenizer.apply_chat_template(req["messages"], tokenize=False, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)
    prompt = req["prompt"]
    bos = tokenizer.bos_token
    return tokenizer.encode(prompt, add_special_tokens=bos is None or not prompt.startswith(bos))


def cancelled():
    """True when a cancel request is waiting; other requests are kept."""
    kept, hit = [], False
    while True:
        try:
            line = requests.get_nowait()
        except queue.Empty:
            break
        if line is not None and json.loads(line).get("op") == "cancel":
            hit = True
        else:
            kept.append(line)
    for line in kept:
        requests.put(line)
    return hit


def faithful(detok):
    """Makes mlx_lm's streaming BPE detokenizer give what the tokenizer's
    decode gives: it drops the first token's leading space and turns the
    byte 0x00 into "Ā" (its byte-level stand-in, because 0 reads as false)."""
    if type(detok).__name__ != "BPEStreamingDetokenizer":
        return detok
    from mlx_lm.tokenizer_utils import _byte_decoder

    def decode_bytes(seq):
        table = _byte_decoder()
        out = bytearray()
        for c in seq:
            b = table.get(c)
            if b is None:
                out.extend(c.encode("utf-8"))
            else:
                out.append(b)
        return out.decode("utf-8", "replace")

    detok._maybe_trim_space = lambda text: text
    detok._decode_bytes = decode_bytes
    return detok


def prefill(model, ids, mx, first=64, seconds=0.25):
    """Runs all but the last prompt token through the model in passes sized
    to take about `seconds` each (the first of `first` tokens), checking for
    a cancel request before each; returns the filled cache and the rest of
    the prompt."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    prompt = mx.array(ids)
    done, n = 0, first
    while len(ids) - done > 1:
        if cancelled():
            raise Cancelled()
        k = min(n, len(ids) - done - 1)
        began = time.perf_counter()
        model(prompt[done : done + k][None], cache=cache)
        mx.eval([c.state for c in cache])
        done += k
        rate = k / max(time.perf_counter() - began, 1e-6)
        n = max(16, min(2048, int(rate * seconds) // 16 * 16))
        mx.clear_cache()
    return cache, prompt[done:]


def generate(req):
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    mx, model, tokenizer = STATE["mx"], STATE["model"], STATE["tokenizer"]
    opts = req.get("options", {})
    ids = encode(req)
    if opts.get("seed") is not None:
        mx.random.seed(int(opts["seed"]))
    top_p = float(opts.get("top_p", 1.0))
    sampler = make_sampler(
        temp=float(opts.get("temperature", 0.0)),
        top_p=top_p if top_p < 1.0 else 0.0,
        min_p=float(opts.get("min_p", 0.0)),
        top_k=int(opts.get("top_k", 0)),
    )
    processors = make_logits_processors(
        repetition_penalty=opts.get("repetition_penalty"),
        repetition_context_size=int(opts.get("repetition_context_size", 20)),
    )
    max_tokens = int(opts.get("max_tokens", 256))
    cancellable = bool(opts.get("cancellable", False))
    eos = set(int(i) for i in tokenizer.eos_token_ids)
    detok = faithful(tokenizer.detokenizer)
    detok.reset()

    def progress(done, total):
        if done < total and cancelled():
            raise Cancelled()

    mx.reset_peak_memory()

    reason, held, n = "max_tokens", None, 0
    prompt_tps, gen_start = 0.0, time.perf_counter()
    start = time.perf_counter()
    if max_tokens > 0:
        prompt, cache, step = mx.array(ids), None, 2048
        if cancellable and not processors:
            try:
                cache, prompt = prefill(model, ids, mx)
            except Cancelled:
                prompt = None
        elif cancellable:
            # the repetition penalty must see the whole prompt: mlx_lm's
            # own passes, small enough to see a cancel request soon
            step = 64
        steps = (
            generate_step(
                prompt,
                model,
                max_tokens=max_tokens,
                sampler=sampler,
                logits_processors=processors,
                prefill_step_size=step,
                prompt_progress_callback=progress,
                prompt_cache=cache,
            )
            if prompt is not None
            else None
        )
        if steps is None:
            reason = "cancelled"
        while steps is not None:
            try:
                token, logprobs = next(steps)
            except StopIteration:
                break
            except Cancelled:
                reason = "cancelled"
                break
            token = int(token)
            if not math.isfinite(logprobs.sum().item()):
                raise ValueError(
                    f"the model produced non-finite logits (NaN or infinity) at generated token {n + 1}; "
                    "its weights or config.json are likely broken"
                )
            if n == 0:
                elapsed = time.perf_counter() - start
                prompt_tps = len(ids) / elapsed if elapsed > 0 else 0.0
                gen_start = time.perf_counter()
            if cancelled():
                reason = "cancelled"
                break
            if token in eos:
                reason = "eos"
                break
            n += 1
            detok.add_token(token)
            if held is not None:
                send({"token": held[0], "text": held[1]})
            held = (token, detok.last_segment)
            if n >= max_tokens:
                break
    detok.finalize()
    if held is not None:
        send({"token": held[0], "text": held[1] + detok.last_segment})
    elapsed = time.perf_counter() - gen_start
    send(
        {
            "done": True,
            "reason": reason,
            "prompt_tokens": len(ids),
            "generated_tokens": n,
            "prompt_tps": prompt_tps,
            "generation_tps": n / elapsed if n and elapsed > 0 else 0.0,
            "peak_memory_bytes": int(mx.get_peak_memory()),
        }
    )


def classify(req):
    """The next-token distribution after each input, one at a time."""
    mx = STATE["mx"]
    model, tokenizer = STATE["model"], STATE["tokenizer"]
    label_ids = []
    for label in req.get("labels", []):
        ids = tokenizer.encode(label, add_special_tokens=False)
        if not ids:
            raise ValueError(f"label {label!r} encodes to no tokens")
        label_ids.append(ids[0])
    k = max(1, int(req.get("top_k", 0)))
    results = []
    for item in req["inputs"]:
        prompt = encode(item)
        logits = model(mx.array(prompt)[None])[0, -1].astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, keepdims=True)
        order = mx.argsort(-logprobs)[:k].tolist()
        values = logprobs.tolist()
        results.append(
            {
                "top": [[i, tokenizer.decode([i]), values[i]] for i in order],
                "labels": [values[i] for i in label_ids],
                "prompt_tokens": len(prompt),
            }
        )
    send({"results": results})


def main():
    threading.Thread(target=read_stdin, daemon=True).start()
    threading.Thread(target=watch_parent, daemon=True).start()
    send({"ready": True})
    while True:
        line = requests.get()
        if line is None:
            return
        try:
            req = json.loads(line)
        except ValueError as e:
            send({"error": f"bad request: {e}"})
            continue
        op = req.get("op")
        try:
            if op == "load":
                send({"ok": True, "info": load(req["path"], req.get("dtype", "auto"), req.get("adapter_path"))})
            elif op == "encode":
                send({"ids": encode(req)})
            elif op == "generate":
                generate(req)
            elif op == "classify":
                classify(req)
            elif op == "cancel":
                continue
            elif op == "close":
                return
            else:
                send({"error": f"unknown op {op!r}"})
        except Exception as e:  # reported to the caller, which ends its stream
            traceback.print_exc(file=sys.stderr)
            send({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
