#!/usr/bin/env bash
# LoRA training, mlx_lm against mlx-infer, on an NVIDIA GPU with MLX's CUDA
# build: the GPU side of `cargo xtask bench train`, for a machine with no
# Rust toolchain and no network (the device machine).
#
# Here (the build machine):
#   cargo build --release -p mlx-infer-cli -p xtask
#   mkdir -p .gpu-bin && cp target/release/mlx-infer target/release/xtask \
#       dist/mlxc/lib/libmlxc.so .gpu-bin/
#   shared/tools/mlx-cuda-carry.sh prepare .cuda      # MLX CUDA + mlx_lm wheels
# On the device (two calls back to back, as mlx-cuda-carry.sh describes):
#   call 1: carry [".cuda/a"]; mkdir -p /root/stash && cp .cuda/a/* /root/stash/
#   call 2: carry [".cuda/b", ".gpu-bin", "fixtures/qwen3"];
#           source .cuda/b/mlx-cuda-carry.sh install .cuda/b && \
#           bash xtask/gpu/bench_train.sh .gpu-bin [MODEL_DIR] [DATA_DIR] [ITERS] [BATCH] [RANK] [SEQ_LEN]
#
# MODEL_DIR defaults to a Qwen3-0.6B-shaped bfloat16 model with random
# weights made on the device by mlx_lm (xtask/python/make_bench_model.py,
# tokenizer from the carried fixtures/qwen3); DATA_DIR defaults to English
# text written by the bench (every row SEQ_LEN tokens). Both sides compute
# in the weights' dtype (bfloat16) on the GPU, with and without gradient
# checkpointing; the first round compiles MLX's CUDA kernels, so three
# rounds run and medians are printed with each side's tokens/s and peak
# memory and the ratios.
set -euo pipefail
bin=$(cd "${1:?BIN_DIR with mlx-infer, xtask and libmlxc.so}" && pwd)
model=${2:-/tmp/bench-qwen3-0.6b-bf16}
data=${3:-}
iters=${4:-20}
batch=${5:-4}
rank=${6:-8}
seq=${7:-512}
export LD_LIBRARY_PATH=$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export MLX_INFER_CACHE=${MLX_INFER_CACHE:-/tmp/mlx-infer-cache}
"$bin/mlx-infer" backends
if [ ! -f "$model/model.safetensors" ]; then
  python3 xtask/python/make_bench_model.py fixtures/qwen3 "$model"
fi
args=(bench train --cli "$bin/mlx-infer" --python python3 --model "$model"
      --iters "$iters" --batch-size "$batch" --rank "$rank" --seq-len "$seq"
      --dtype model --grad-checkpoint --runs 3)
if [ -n "$data" ]; then args+=(--data "$data"); fi
"$bin/xtask" "${args[@]}"
