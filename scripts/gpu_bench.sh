#!/usr/bin/env bash
# The figures docs/benchmarks.md reports for a Linux machine with an NVIDIA GPU, in one run:
#   scripts/gpu_bench.sh OUT_DIR [SESSION_SECONDS] [SIDE_SECONDS]
# Full-size Moshi v0.1 with random weights (--random), the MLX codec and rustymimi, q4/q8/bf16,
# the weights written to disk and launched from there, and Kyutai's local.py side by side when
# jackd is on the PATH (scripts/gpu_audio_fetch.sh here, then scripts/gpu_audio_stage.sh there,
# bring it to a machine without a registry).
# Each command writes OUT_DIR/<name>.json (the bench's --json) and OUT_DIR/<name>.log.
# Run it with `moshi-tui` on the PATH, or MOSHI_TUI="python3 -m tui.cli" from the project root.
# The q4 weights (4.8 GB) go to $MOSHI_TUI_WEIGHTS_DIR (default /tmp/moshi-tui-weights).
# GPU_BENCH_PARTS=name,name,... runs only those parts, in this order (a machine lent for a few
# minutes at a time): step-q4 pipeline-q4-mlx pipeline-q4-disk pipeline-q4-rustymimi
# pipeline-q8-mlx pipeline-bf16-mlx compare-official codec-mlx codec-rustymimi
# (pipeline-q4-disk and compare-official need the weights step-q4 writes).
set -u
out=${1:?usage: gpu_bench.sh OUT_DIR [SESSION_SECONDS] [SIDE_SECONDS]}
secs=${2:-300}
side=${3:-60}
mkdir -p "$out"
mt=${MOSHI_TUI:-moshi-tui}
weights=${MOSHI_TUI_WEIGHTS_DIR:-/tmp/moshi-tui-weights}
mkdir -p "$weights"
q4file=$weights/model.q4.safetensors
parts=${GPU_BENCH_PARTS:-all}
want() { [ "$parts" = all ] || [[ ",$parts," == *",$1,"* ]]; }
run() {  # run NAME ARGS...: one bench, its log and JSON
  local name=$1; shift
  want "$name" || return 0
  echo "== $name: $mt $* ($(date +%T))"
  # (GPU_BENCH_LIMIT=SECONDS: a part still running then is stopped by SIGTERM, which a
  # session bench answers by reporting what it measured so far: a lease running out keeps it)
  ${GPU_BENCH_LIMIT:+timeout --kill-after=30 "$GPU_BENCH_LIMIT"} \
    $mt "$@" --json "$out/$name.json" >"$out/$name.log" 2>&1
  echo "   exit $? ($(date +%T))"
  grep -iE "thrash" "$out/$name.log" && echo "   ^ cache thrashing in $name"
}
# The step alone (the default mode: layered on CUDA), writing the q4 weights for the launch below.
run step-q4 bench step --random -q 4 --steps 300 --save-weights "$q4file"
# The headline: q4, MLX codec, a session long enough for two segments (3000 steps = 4 min).
# (with its Perfetto trace: every frame's stages, to see where a late frame lost its time)
run pipeline-q4-mlx bench pipeline --random -q 4 --codec mlx --seconds "$secs" \
  --trace "$out/pipeline-q4-mlx.trace.json"
# Launch to first frame with the weights on disk (the demo's Mimi, the 32k tokenizer).
read -r mimi tok < <(python3 -c 'from engine.model import demo, fullsize
print(demo.ensure_demo().mimi, fullsize.ensure_text_tokenizer(32000))')
run pipeline-q4-disk bench pipeline --moshi-weight "$q4file" --mimi-weight "$mimi" \
  --tokenizer "$tok" --seconds 20
# Side by side: the CPU codec, the other weights.
run pipeline-q4-rustymimi bench pipeline --random -q 4 --codec rustymimi --seconds "$side"
run pipeline-q8-mlx bench pipeline --random -q 8 --codec mlx --seconds "$side"
run pipeline-bf16-mlx bench pipeline --random --codec mlx --seconds "$side"
# Kyutai's local.py and moshi-tui on the same weights, through a 20 ms JACK dummy card.
if want compare-official && command -v jackd >/dev/null; then
  echo "== compare-official ($(date +%T))"
  python3 -m scripts.compare_official --seconds "$side" --rounds 1 --period 480 \
    --moshi-weight "$q4file" --mimi-weight "$mimi" --tokenizer "$tok" -q 4 \
    --work "$out/compare" --json "$out/compare.json" >"$out/compare.log" 2>&1
  echo "   exit $? ($(date +%T))"
fi
# Each codec alone.
run codec-mlx bench codec --demo --codec mlx --frames 100
run codec-rustymimi bench codec --demo --codec rustymimi --frames 100
echo "done ($(date +%T))"
