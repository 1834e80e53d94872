#!/usr/bin/env bash
# How MLX's CUDA backend submits kernels, swept over the settings it reads
# (MLX_USE_CUDA_GRAPHS, MLX_MAX_OPS_PER_BUFFER), for mlx_lm and mlx-infer
# alike: single-stream decode (Qwen3-0.6B-shaped), batched decode at 32
# rows (Gemma3-1B-shaped), the server at 32 streams, then classification
# and its forward's pieces; a previous build carried as mlx-infer-old is
# timed beside the decode under the default setting. Run on the
# device after `mlx-cuda-carry.sh install`, like bench_infer.sh:
#   OUT=$OUT bash xtask/gpu/launch_modes.sh .gpu-bin .devbench/wheels .devbench/tok
# Each setting is one line of `NAME VAR=VALUE...`; "default" sets nothing.
# PARTS (default "decode batch serve classify"; "opcost" adds
# xtask/gpu/op_costs.py under each setting) picks what runs and in
# which order; SERVE_SETTINGS: how many settings the server runs under (2);
# DECODE_ROUNDS (2, five runs per side each); CLASSIFY_ROUNDS (2);
# SKIP_OPS=1 leaves classify_ops.py out.
set -uo pipefail
bin=$(cd "${1:?BIN_DIR}" && pwd)
wheels=${2:?WHEELS_DIR}
tok=${3:?TOK_DIR}
out=${OUT:-/tmp}
mkdir -p "$out"
export LD_LIBRARY_PATH=$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mi=$bin/mlx-infer
# QWEN_MODEL / GEMMA_MODEL: other model directories (the fixtures, to try
# the script on a CPU).
qwen=${QWEN_MODEL:-/tmp/bench-qwen3-0.6b-bf16}
gemma=${GEMMA_MODEL:-/tmp/bench-gemma3-1b-bf16}
source "$(dirname "$0")/common.sh"
need_qwen
parts=${PARTS:-decode batch serve classify}
if [[ " $parts " == *" batch "* || " $parts " == *" classify "* ]]; then
  need_gemma
fi
settings=${SETTINGS:-"default
graphs0 MLX_USE_CUDA_GRAPHS=0
ops100 MLX_MAX_OPS_PER_BUFFER=100 MLX_MAX_MB_PER_BUFFER=1000"}
prompt=$(python3 -c 'print("The quick brown fox jumps over the lazy dog. " * 20)')
# Median generation_tps of the JSON lines on stdin.
median_tps() {
  python3 -c 'import json,sys,statistics as s; print(round(s.median(json.loads(l)["generation_tps"] for l in sys.stdin if l.startswith("{"))))'
}
decode() {
  echo "$prompt" | "$mi" bench --model $qwen --max-tokens 8 --runs 1 > /dev/null 2>&1
  echo "$prompt" | python3 xtask/python/bench_mlx_lm.py $qwen 8 1 model > /dev/null 2>&1
  for r in $(seq ${DECODE_ROUNDS:-2}); do
    while read -r name vars; do
      d=$(echo "$prompt" | env $vars python3 xtask/python/bench_mlx_lm.py $qwen 128 5 model 2> /dev/null | median_tps)
      m=$(echo "$prompt" | env $vars MLX_INFER_STEP_PROFILE=$out/decode-$name.txt "$mi" bench --model $qwen \
        --max-tokens 128 --runs 5 2> /dev/null | median_tps)
      o=
      if [ $name = default ] && [ -x $bin/mlx-infer-old ]; then
        o=" mlx-infer-old $(echo "$prompt" | "$bin/mlx-infer-old" bench --model $qwen --max-tokens 128 --runs 5 \
          2> /dev/null | median_tps)"
      fi
      echo "decode $name round $r mlx_lm $d mlx-infer $m$o"
    done <<< "$settings"
  done
  summarise $out/decode-*.txt
}

batch() {
  "$mi" batch --model $gemma --input /tmp/s256.txt --max-tokens 4 --batch-size 32 --json > /dev/null 2>&1
  while read -r name vars; do
    d=$(env $vars python3 xtask/python/bench_batch.py $gemma batch /tmp/s256.txt 32 128 1 2> /dev/null | median_tps)
    m=$(env $vars MLX_INFER_STEP_PROFILE=$out/batch-$name.txt "$mi" batch --model $gemma --input /tmp/s256.txt \
      --max-tokens 128 --batch-size 32 --json 2> /dev/null | tail -1 | median_tps)
    echo "batch $name mlx_lm $d mlx-infer $m"
  done <<< "$settings"
  summarise $out/batch-*.txt
}

# The server at 32 streams under the first SERVE_SETTINGS settings (both
# sides restarted for each), then the engine's steps, those that admitted
# requests apart from the others.
serve() {
  need_openai "$wheels"
  while read -r name vars; do
    env $vars MLX_INFER_STEP_PROFILE=/tmp/serve-$name.txt "$mi" serve --port 8101 --max-batch 32 \
      --model $qwen 2> /dev/null &
    local a=$!
    env MLX_CUDA_GRAPH_CACHE_SIZE=${MLX_CUDA_GRAPH_CACHE_SIZE:-4096} $vars \
      python3 -m mlx_lm server --model $qwen --port 8102 --log-level WARNING 2> /dev/null &
    local b=$!
    wait_up 8101
    wait_up 8102
    for r in warm 1 2; do
      for side in "mlx_lm 8102 $qwen" "mlx-infer 8101 default"; do
        set -- $side
        res=$(python3 xtask/python/bench_serve.py http://127.0.0.1:$2/v1 $3 32 64 64 2>&1 | tail -1)
        [ $r = warm ] || echo "serve $name $1 $res"
      done
    done
    kill $a $b 2> /dev/null
    wait $a $b 2> /dev/null
  done <<< "$(echo "$settings" | head -n ${SERVE_SETTINGS:-2})"
  python3 - /tmp/serve-*.txt <<'PY'
import statistics, sys
for path in sys.argv[1:]:
    steps = [dict(p.split("=") for p in l.split()[1:]) for l in open(path) if l.startswith("engine ")]
    for label, pick in (("admitting", lambda s: s["admitted"] != "0"), ("other", lambda s: s["admitted"] == "0")):
        chosen = [s for s in steps if pick(s)]
        if chosen:
            print(path.split("/")[-1], label, len(chosen), " ".join(
                f"{k}={statistics.median(float(s[k]) for s in chosen):.0f}/max{max(float(s[k]) for s in chosen):.0f}"
                for k in ("rows", "admitted", "read_us", "remove_us", "decode_us", "admit_us")))
PY
}

# Classification (default settings): 4096 and 16,384 sentences, each a
# fresh process; the steady rate is the extra 12,288 over the extra time.
classify() {
  "$mi" classify --model $gemma --input /tmp/s4k.txt --batch-size 512 --json > /dev/null 2>&1
  for r in $(seq ${CLASSIFY_ROUNDS:-2}); do
    a=$("$mi" classify --model $gemma --input /tmp/s4k.txt --batch-size 512 --json 2> /dev/null | tail -1)
    b=$("$mi" classify --model $gemma --input /tmp/s16k.txt --batch-size 512 --json 2> /dev/null | tail -1)
    python3 -c "import json,sys; a,b=(json.loads(x)['inputs_per_s'] for x in sys.argv[1:]); \
print(f'classify 4096 {a:.0f}/s 16384 {b:.0f}/s steady {12288/(16384/b-4096/a):.0f}/s')" "$a" "$b"
  done
  [ -n "${SKIP_OPS:-}" ] || python3 xtask/gpu/classify_ops.py $gemma 512 18
}

# MLX's evaluation cost per operation, by kind, under each setting.
opcost() {
  while read -r name vars; do
    env $vars python3 xtask/gpu/op_costs.py 1000 | sed "s/^/$name /"
  done <<< "$settings"
}

for part in $parts; do
  $part
done
