# Shared by the device scripts (bench_infer.sh, launch_modes.sh), sourced
# after they set `qwen`, `gemma` and `tok`: the bench models and sentences,
# the OpenAI client, waiting for a server, and the step profile's medians.

# The Qwen3-0.6B-shaped bench model (random weights, mlx_lm's own class).
need_qwen() {
  [ -d $qwen ] || python3 xtask/python/make_bench_model.py fixtures/qwen3 $qwen > /dev/null
}

# The Gemma3-1B-shaped bench model (SmolLM2's tokenizer from `tok`) and the
# generated English sentences: /tmp/s256.txt, /tmp/s4k.txt (4096) and
# /tmp/s16k.txt (those 4096 four times over).
need_gemma() {
  [ -d $gemma ] || python3 xtask/python/make_gemma3_bench_model.py "${tok:?TOK_DIR}" $gemma > /dev/null
  python3 - <<'PY'
S = ["The old farmer", "A young engineer", "My neighbour's cat", "The city council",
     "Our small team", "The quiet student", "A travelling musician", "The new manager"]
V = ["carefully repaired", "quickly forgot", "proudly presented", "slowly painted",
     "happily shared", "angrily rejected", "finally finished", "secretly admired"]
O = ["the broken wooden fence", "a long report about rivers", "the red kite on the hill",
     "an old map of the harbour", "the results of the spring survey",
     "a plan for the village library", "the recipe for apple bread", "the lights in the hall"]
E = ["before the rain began.", "after a very long day.", "in front of everyone.",
     "without saying a word.", "on a cold Monday morning.", "while the others slept."]
s = [f"{S[i % 8]} {V[(i // 8) % 8]} {O[(i // 64 + i) % 8]} {E[(i // 3) % 6]}" for i in range(4096)]
open("/tmp/s4k.txt", "w").write("\n".join(s) + "\n")
open("/tmp/s16k.txt", "w").write("\n".join(s * 4) + "\n")
open("/tmp/s256.txt", "w").write("\n".join(s[:256]) + "\n")
PY
}

# The `openai` client bench_serve.py drives servers with, from the wheels
# in WHEELS_DIR when the image lacks it.
need_openai() {
  if ! python3 -c 'import openai' 2> /dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/oai "${1:?WHEELS_DIR}"/*.whl
    export PYTHONPATH=/tmp/oai${PYTHONPATH:+:$PYTHONPATH}
  fi
}

# Waits (up to 2 minutes) until the server on port $1 answers.
wait_up() {
  for _ in $(seq 240); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$1/v1/models', timeout=2)" \
      2> /dev/null && return
    sleep 0.5
  done
}

# Medians of the step profile's fields, per kind of line, and the
# operation listings (`*-kinds` lines) as written.
summarise() {
  python3 - "$@" <<'PY'
import statistics, sys
for path in sys.argv[1:]:
    rows, kinds = {}, set()
    for line in open(path):
        kind, *pairs = line.split()
        if kind.endswith("-kinds"):
            kinds.add(line.rsplit(" pid=", 1)[0])
        elif pairs and "=" in pairs[0]:
            for k, v in (p.split("=") for p in pairs):
                if k != "pid":
                    rows.setdefault((kind, k), []).append(float(v))
    for (kind, k), v in sorted(rows.items()):
        print(f"{path}: {kind} {k} median {statistics.median(v):.0f} (n={len(v)})")
    for k in sorted(kinds):
        print(f"{path}: {k}")
PY
}
