#!/usr/bin/env bash
# The figures README.md reports for a Linux machine with an NVIDIA GPU, in one run:
#   scripts/gpu_bench.sh OUT_DIR [SESSION_SECONDS]
# Full-size Moshi v0.1 with random weights (--random), the MLX codec and rustymimi, q4/q8/bf16.
# Each command writes OUT_DIR/<name>.json (the bench's --json) and OUT_DIR/<name>.log.
# Run it with `moshi-tui` on the PATH, or MOSHI_TUI="python3 -m tui.cli" from the project root.
set -u
out=${1:?usage: gpu_bench.sh OUT_DIR [SESSION_SECONDS]}
secs=${2:-300}
mkdir -p "$out"
mt=${MOSHI_TUI:-moshi-tui}
run() {  # run NAME ARGS...: one bench, its log and JSON
  local name=$1; shift
  echo "== $name: $mt $* ($(date +%T))"
  $mt "$@" --json "$out/$name.json" >"$out/$name.log" 2>&1
  echo "   exit $? ($(date +%T))"
  grep -iE "thrash" "$out/$name.log" && echo "   ^ cache thrashing in $name"
}
# The headline: q4, MLX codec, a session long enough for two segments (3000 steps = 4 min).
run pipeline-q4-mlx bench pipeline --random -q 4 --codec mlx --seconds "$secs"
# What each step change buys (260 steps: past the first 256-position cache block).
for mode in stock prealloc onesync fixed compiled; do
  run "step-q4-$mode" bench step --random -q 4 --steps 260 --lm-step "$mode"
done
run codec-mlx bench codec --demo --codec mlx --frames 100
run codec-rustymimi bench codec --demo --codec rustymimi --frames 100
# Side by side: the CPU codec, and the other weights.
run pipeline-q4-rustymimi bench pipeline --random -q 4 --codec rustymimi --seconds 60
run pipeline-q8-mlx bench pipeline --random -q 8 --codec mlx --seconds 60
run pipeline-bf16-mlx bench pipeline --random --codec mlx --seconds 60
echo "done ($(date +%T))"
