"""mlx_lm's tuner on a model and an adapter, for the Rust parity tests.

Usage: python tuner_reference.py REQUEST_JSON

The request names a model directory, an adapter folder (adapter_config.json
+ adapters.safetensors holding the initial adapter weights), batches
(token ids, rows padded with 0) with their (offset, length) pairs, and a
mode:

- "grad": loss, token count and the gradient of every trainable parameter
  for the first batch, written to OUT (safetensors) plus a JSON line on
  stdout;
- "train": STEPS optimiser updates (batch i % len(batches) at step i) with
  OPTIMIZER and LR, the final trainable parameters written to OUT.
"""

import json
import sys
import types

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from mlx_lm import load
from mlx_lm.tuner.trainer import default_loss
from mlx_lm.tuner.utils import linear_to_lora_layers


def main():
    req = json.loads(sys.argv[1])
    model, _ = load(req["model"])
    with open(f"{req['adapter']}/adapter_config.json") as f:
        cfg = types.SimpleNamespace(**json.load(f))
    model.freeze()
    if cfg.fine_tune_type == "full":
        for layer in model.layers[-max(cfg.num_layers, 0):]:
            layer.unfreeze()
    else:
        linear_to_lora_layers(
            model,
            cfg.num_layers,
            cfg.lora_parameters,
            use_dora=cfg.fine_tune_type == "dora",
        )
    model.load_weights(f"{req['adapter']}/adapters.safetensors", strict=False)
    batches = [
        (mx.array(b, dtype=mx.int32), mx.array(l, dtype=mx.int32))
        for b, l in zip(req["batches"], req["lengths"])
    ]
    lvg = nn.value_and_grad(model, default_loss)
    if req["mode"] == "grad":
        (loss, ntoks), grads = lvg(model, *batches[0])
        grads = dict(tree_flatten(grads))
        mx.eval(loss, ntoks, grads)
        mx.save_safetensors(req["out"], grads)
        print(json.dumps({"loss": loss.item(), "ntoks": ntoks.item()}))
        return
    opt = {
        "adam": optim.Adam,
        "adamw": optim.AdamW,
        "sgd": optim.SGD,
    }[req["optimizer"]](learning_rate=req["lr"], **req.get("optimizer_args", {}))
    losses = []
    for i in range(req["steps"]):
        (loss, _), grads = lvg(model, *batches[i % len(batches)])
        opt.update(model, grads)
        mx.eval(loss, model.parameters(), opt.state)
        losses.append(loss.item())
    params = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(req["out"], params)
    print(json.dumps({"losses": losses}))


if __name__ == "__main__":
    main()
