"""Times mlx_lm's LoRA training (mlx_lm.tuner.trainer.train, compiled step)
on a model and a data folder, with the settings `mlx-infer train` gets in
`cargo xtask bench train`. Prints one JSON line: the last training report
(tokens/s over the second half of the iterations, MLX peak memory since
training started), the dtype computed in and the BLAS loaded.

Usage: python bench_train_mlx_lm.py MODEL DATA ITERS BATCH RANK NUM_LAYERS
       MAX_SEQ_LENGTH GRAD_CHECKPOINT(0|1) DTYPE(model|auto|float32|...)
"""

import json
import os
import sys
import tempfile
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mlx.core as mx  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
from mlx_lm import load  # noqa: E402
from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset  # noqa: E402
from mlx_lm.tuner.trainer import TrainingArgs, TrainingCallback, train  # noqa: E402
from mlx_lm.tuner.utils import linear_to_lora_layers  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_mlx_lm import NAMES, blas, stored_dtype, target_dtype  # noqa: E402


class Last(TrainingCallback):
    def __init__(self):
        self.report = None

    def on_train_loss_report(self, info):
        self.report = info


def main():
    model_dir, data = sys.argv[1], sys.argv[2]
    iters, batch, rank, layers, max_len = map(int, sys.argv[3:8])
    checkpoint = sys.argv[8] == "1"
    requested = sys.argv[9]
    model, tokenizer = load(model_dir)
    stored = stored_dtype(model)
    target = target_dtype(requested, stored)
    if target is not None:
        model.set_dtype(target)
    mx.eval(model.parameters())
    mx.random.seed(0)
    model.freeze()
    linear_to_lora_layers(
        model, layers, {"rank": rank, "scale": 20.0, "dropout": 0.0}
    )
    cfg = types.SimpleNamespace(mask_prompt=False)
    train_set, _, _ = load_local_dataset(Path(data), tokenizer, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArgs(
            batch_size=batch,
            iters=iters,
            steps_per_report=max(iters // 2, 1),
            steps_per_eval=10**9,
            steps_per_save=10**9,
            adapter_file=Path(tmp) / "adapters.safetensors",
            max_seq_length=max_len,
            grad_checkpoint=checkpoint,
        )
        mx.reset_peak_memory()
        cb = Last()
        train(
            model,
            optim.Adam(learning_rate=1e-5),
            CacheDataset(train_set),
            None,
            args=args,
            training_callback=cb,
        )
    r = cb.report
    print(
        json.dumps(
            {
                "tokens_per_second": r["tokens_per_second"],
                "peak_memory_gb": r["peak_memory"],
                "compute_dtype": NAMES.get(target if target is not None else stored, "?"),
                "blas": blas(),
            }
        )
    )


if __name__ == "__main__":
    main()
