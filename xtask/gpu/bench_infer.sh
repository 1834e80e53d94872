#!/usr/bin/env bash
# Inference on an NVIDIA GPU with MLX's CUDA build, mlx_lm against
# mlx-infer, with each step's host timings (MLX_INFER_STEP_PROFILE), for a
# machine with no Rust toolchain and no network (the device machine). One
# call runs what the GPU issues measure: single-stream decode, the server
# at 32/8/1 streams, classification and batched decode.
#
# Here (the build machine):
#   cargo build --release -p mlx-infer-cli
#   mkdir -p .gpu-bin && strip -o .gpu-bin/mlx-infer target/release/mlx-infer
#   cp ~/.cache/mlx-infer/mlx-*/mlxc/lib/libmlxc.so .gpu-bin/
#   mkdir -p .gpu-wheels && pip download openai --dest .gpu-wheels \
#       --python-version 3.12 --only-binary=:all: --platform manylinux_2_17_x86_64
#   mlx-infer convert --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/smol \
#       && mkdir -p .gpu-tok && cp /tmp/smol/tokenizer*.json .gpu-tok/
#   shared/tools/mlx-cuda-carry.sh prepare .cuda      # MLX CUDA + mlx_lm wheels
# On the device (two calls back to back, as mlx-cuda-carry.sh describes):
#   call 1: carry [".cuda/a"]; mkdir -p /root/stash && cp .cuda/a/* /root/stash/
#   call 2: carry [".cuda/b", ".gpu-bin", ".gpu-wheels", ".gpu-tok", "fixtures/qwen3"];
#           source .cuda/b/mlx-cuda-carry.sh install .cuda/b && \
#           OUT=$OUT bash xtask/gpu/bench_infer.sh .gpu-bin .gpu-wheels .gpu-tok [PARTS]
#
# PARTS (default "decode serve classify batch"; "ops" times the pieces of
# the classification forward) picks what runs. Models are
# made on the device with random weights by mlx_lm's own classes: a
# Qwen3-0.6B-shaped bfloat16 model (decode, serve; tokenizer of the carried
# fixtures/qwen3) and a Gemma3-1B-shaped one (classify, batch; SmolLM2's
# tokenizer from TOK_DIR). Every part warms up first (MLX compiles CUDA
# kernels on first use) and alternates the sides; step profiles land in
# $OUT (or /tmp) as *-prof.txt and are summarised at the end.
set -uo pipefail
bin=$(cd "${1:?BIN_DIR with mlx-infer and libmlxc.so}" && pwd)
wheels=${2:-}
tok=${3:-}
parts=${4:-decode serve classify batch}
out=${OUT:-/tmp}
mkdir -p "$out"
export LD_LIBRARY_PATH=$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mi=$bin/mlx-infer
"$mi" backends
# QWEN_MODEL / GEMMA_MODEL: use these model directories instead (e.g. the
# fixtures, to try the script on a CPU).
qwen=${QWEN_MODEL:-/tmp/bench-qwen3-0.6b-bf16}
gemma=${GEMMA_MODEL:-/tmp/bench-gemma3-1b-bf16}
source "$(dirname "$0")/common.sh"

if [[ " $parts " == *" decode "* ]]; then
  need_qwen
  prompt=$(python3 -c 'print("The quick brown fox jumps over the lazy dog. " * 20)')
  # Both decode paths (MLX_INFER_DECODE; eager is the default),
  # each warmed up (the compiled step's fused kernels are built on first use).
  for mode in eager compiled; do
    echo "$prompt" | MLX_INFER_DECODE=$mode "$mi" bench --model $qwen --max-tokens 8 --runs 1 > /dev/null 2>&1
  done
  for r in 1 2 3; do
    echo "$prompt" | python3 xtask/python/bench_mlx_lm.py $qwen 128 5 model | sed 's/^/decode mlx_lm /'
    for mode in eager compiled; do
      echo "$prompt" | MLX_INFER_DECODE=$mode MLX_INFER_STEP_PROFILE=$out/decode-$mode-prof.txt \
        "$mi" bench --model $qwen --max-tokens 128 --runs 5 2> /dev/null | sed "s/^/decode mlx-infer $mode /"
    done
  done
  summarise $out/decode-eager-prof.txt $out/decode-compiled-prof.txt
fi

if [[ " $parts " == *" serve "* ]]; then
  need_qwen
  need_openai "$wheels"
  MLX_INFER_STEP_PROFILE=$out/serve-prof.txt "$mi" serve --port 8101 --max-batch 32 \
    --model $qwen 2> $out/serve-mlx-infer.err &
  # the CUDA graph cache mlx-infer gives itself (MLX's default of 400
  # kills mlx_lm.server's generation thread under a changing batch)
  MLX_CUDA_GRAPH_CACHE_SIZE=${MLX_CUDA_GRAPH_CACHE_SIZE:-4096} \
    python3 -m mlx_lm server --model $qwen --port 8102 --log-level WARNING 2> $out/serve-mlx_lm.err &
  wait_up 8101
  wait_up 8102
  drive() { # side port model streams
    echo "level $1 $4" >> $out/serve-prof.txt
    python3 xtask/python/bench_serve.py http://127.0.0.1:$2/v1 $3 $4 $((2 * $4)) 64 2>&1 | tail -1 | sed "s/^/serve $1 $4 /"
  }
  for c in 8 32; do drive mlx_lm 8102 $qwen $c > /dev/null; drive mlx-infer 8101 default $c > /dev/null; done
  for r in 1 2 3; do
    for c in 32 8 1; do drive mlx_lm 8102 $qwen $c; drive mlx-infer 8101 default $c; done
  done
  kill %1 %2 2> /dev/null
  wait
  summarise $out/serve-prof.txt
fi

if [[ " $parts " == *" classify "* ]]; then
  need_gemma
  "$mi" classify --model $gemma --input /tmp/s4k.txt --batch-size 512 --json 2> /dev/null | tail -1 | sed 's/^/classify warm /'
  for r in 1 2; do
    for f in s4k s16k; do
      "$mi" classify --model $gemma --input /tmp/$f.txt --batch-size 512 --json 2> /dev/null | tail -1 | sed "s/^/classify $f /"
    done
  done
  python3 - $gemma <<'PY'
import sys, time
import mlx.core as mx
from mlx_lm import load
sys.path.insert(0, "xtask/python")
from bench_batch import raw_forward
model, tok = load(sys.argv[1])
prompts = [tok.encode(line) for line in open("/tmp/s4k.txt").read().splitlines()]
raw_forward(model, prompts, 512)  # warm-up
for i in range(3):
    t = time.perf_counter()
    raw_forward(model, prompts, 512)
    print(f"classify mlx_lm raw forward {len(prompts) / (time.perf_counter() - t):.0f} sentences/s")
PY
fi

if [[ " $parts " == *" ops "* ]]; then
  # The classification forward's pieces at its shape (512 rows of 18).
  need_gemma
  python3 xtask/gpu/classify_ops.py $gemma 512 18
fi

if [[ " $parts " == *" batch "* ]]; then
  need_gemma
  "$mi" batch --model $gemma --input /tmp/s256.txt --max-tokens 8 --batch-size 32 --json 2> /dev/null | tail -1 > /dev/null
  # A previous build beside this one, when carried as mlx-infer-old.
  sides="mlx-infer"
  [ -x $bin/mlx-infer-old ] && sides="$sides mlx-infer-old"
  for r in 1 2 3; do
    python3 xtask/python/bench_batch.py $gemma batch /tmp/s256.txt 32 128 $r 2> /dev/null | sed 's/^/batch mlx_lm /'
    for side in $sides; do
      prof=/dev/null
      [ $side = mlx-infer ] && prof=$out/batch-prof.txt
      MLX_INFER_STEP_PROFILE=$prof $bin/$side batch --model $gemma --input /tmp/s256.txt --max-tokens 128 \
        --batch-size 32 --json 2> /dev/null | tail -1 | sed "s/^/batch $side /"
    done
  done
  summarise $out/batch-prof.txt
fi
