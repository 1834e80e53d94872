#!/usr/bin/env bash
# A model too large for one GPU, served across several through MLX's NCCL
# backend (`mlx-infer launch --backend nccl`), on a multi-GPU device machine
# (no Rust toolchain, no network): greedy ids against mlx_lm on the CPU with
# the same weights, and batch throughput against the number of GPUs.
#
# Here: build and carry as xtask/gpu/bench_infer.sh says (.gpu-bin, .cuda,
# fixtures/qwen3). On the device (two calls back to back):
#   call 1: carry [".cuda/a"]; mkdir -p /root/stash && cp .cuda/a/* /root/stash/
#   call 2: carry [".cuda/b", ".gpu-bin", "fixtures/qwen3"];
#           source .cuda/b/mlx-cuda-carry.sh install .cuda/b && \
#           bash xtask/gpu/bench_distributed.sh .gpu-bin [SHAPE ...]
#
# SHAPE: config fields of the Qwen3-family model made on the device with
# random bfloat16 weights (default about 49B parameters, 98 GB: more than
# one 80 GB H100; pick larger ones for H200s, within the machine's disk).
# GPUS (default: all nvidia-smi lists) and TOKENS (default 32) can be set.
set -uo pipefail
bin=$(cd "${1:?BIN_DIR with mlx-infer and libmlxc.so}" && pwd)
shift
shape=("$@")
if [ ${#shape[@]} -eq 0 ]; then
  shape=(hidden_size=8192 num_hidden_layers=56 intermediate_size=28672
         num_attention_heads=64 num_key_value_heads=8)
fi
export LD_LIBRARY_PATH=$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mi=$bin/mlx-infer
gpus=${GPUS:-$(nvidia-smi -L | wc -l)}
tokens=${TOKENS:-32}
model=/tmp/bench-large
nvidia-smi --query-gpu=name,memory.total --format=csv
[ -d $model ] || python3 xtask/python/make_bench_model.py fixtures/qwen3 $model "${shape[@]}"
du -sh $model
prompt="The quick brown fox jumps over the lazy dog."

# The reference: mlx_lm on the CPU, the same weights, greedy.
python3 - $model "$prompt" <<'PY'
import sys
import mlx.core as mx
mx.set_default_device(mx.cpu)
from mlx_lm import load
from mlx_lm.generate import generate_step
model, tok = load(sys.argv[1])
ids = []
prompt = mx.array(tok.encode(sys.argv[2]))
for (token, _), _ in zip(generate_step(prompt, model, stream=mx.default_stream(mx.cpu)), range(8)):
    ids.append(int(token))
print("reference cpu ids", ids)
PY

# The same prompt across all the GPUs, tensor-parallel.
"$mi" launch -n "$gpus" --backend nccl -- generate --model $model --prompt "$prompt" \
  --max-tokens 8 --json --distributed tensor --distributed-backend nccl \
  | python3 -c 'import sys, json; print("gpus ids", [json.loads(l)["id"] for l in sys.stdin if "\"id\"" in l])'

# Batch throughput against the number of GPUs (those that hold the model).
python3 -c 'print("\n".join(f"Sentence number {i} is about the sea." for i in range(64)))' > /tmp/big-in.txt
for n in $(seq 2 "$gpus"); do
  "$mi" launch -n "$n" --backend nccl -- batch --model $model --input /tmp/big-in.txt \
    --max-tokens "$tokens" --batch-size 32 --json --distributed tensor --distributed-backend nccl \
    2> /tmp/big-batch-$n.err | tail -1 | sed "s/^/batch over $n gpus /" || tail -3 /tmp/big-batch-$n.err
done
