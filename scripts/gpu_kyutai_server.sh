#!/usr/bin/env bash
# Kyutai's own PyTorch server (`moshi.server`, the `moshi` 0.2.13 wheel) at full size with random
# weights on the GPU machine, talked to by `moshi-tui --remote` for a while:
#   scripts/gpu_kyutai_server.sh OUT_DIR [SECONDS]      (default 60 s, from the project root)
#   scripts/gpu_kyutai_server.sh --fetch [WHEEL_DIR]    (where a registry answers; default
#                                                        .gpu/kyutai, git-ignored)
# The machine has no registry: --fetch, run beforehand elsewhere, downloads the moshi 0.2.13,
# einops and safetensors wheels, and those the server's Python lacks are installed from
# $KYUTAI_WHEELS (default .gpu/kyutai) with --no-deps into $KYUTAI_SITE (default
# /tmp/kyutai-site), beside the machine's own torch.
# Steps (each leaves its file in OUT_DIR): weights.log (random Moshi 7B bf16 + Mimi, saved
# with safetensors in $KYUTAI_WEIGHTS_DIR, default /tmp/kyutai-weights, with a config.json of
# moshi's loaders._lm_kwargs; kept for the next run), server.log (`moshi.server --static none`),
# client.log and client-stats.json (`moshi-tui --remote ... --headless`, the speech WAV repeated
# to SECONDS, in the weights folder), kyutai_server.json (frames both ways, RTT, Opus costs, the end-to-end estimate,
# the server's "frame handled" times).
# Environment: SERVER_PY (the Python with torch, default python3), MOSHI_TUI (the client,
# default moshi-tui; or "python3 -m tui.cli"), CLIENT_PY (a Python with moshi-tui's packages,
# default python3), KYUTAI_DEVICE (default cuda), KYUTAI_SIZE (full, or tiny for a dry run on a
# CPU with KYUTAI_DEVICE=cpu), KYUTAI_PORT (default 8998), KYUTAI_LOAD_S (how long the server
# may take to listen, default 900).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

if [ "${1:-}" = --fetch ]; then
  dir=${2:-.gpu/kyutai}
  if [[ $dir == .gpu/* ]] && { [ -d .git ] || [ -f .git ]; }; then
    exclude=$(git rev-parse --git-path info/exclude)
    grep -qxF "/.gpu/" "$exclude" 2>/dev/null || echo "/.gpu/" >>"$exclude"
  fi
  mkdir -p "$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$dir" \
    moshi==0.2.13 einops==0.8.1
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --python-version 3.12 --implementation cp -d "$dir" \
    safetensors==0.5.3
  ls -1 "$dir"
  exit 0
fi

out=${1:?usage: gpu_kyutai_server.sh OUT_DIR [SECONDS] | --fetch [WHEEL_DIR]}
secs=${2:-60}
py=${SERVER_PY:-python3}
cpy=${CLIENT_PY:-python3}
mt=${MOSHI_TUI:-moshi-tui}
wheels=${KYUTAI_WHEELS:-.gpu/kyutai}
site=${KYUTAI_SITE:-/tmp/kyutai-site}
weights=${KYUTAI_WEIGHTS_DIR:-/tmp/kyutai-weights}
device=${KYUTAI_DEVICE:-cuda}
size=${KYUTAI_SIZE:-full}
port=${KYUTAI_PORT:-8998}
load_s=${KYUTAI_LOAD_S:-900}
mkdir -p "$out" "$site"
out=$(cd "$out" && pwd)
say() { echo "== $* ($(date +%T))"; }
fail() { echo "gpu_kyutai_server: $*" >&2; exit 1; }

# --- the server's Python: torch from the machine, moshi (+ einops, safetensors) from the wheels
spath="$site:$here${PYTHONPATH:+:$PYTHONPATH}"
spy() { PYTHONPATH="$spath" "$py" "$@"; }
spy -c 'import torch' 2>/dev/null || fail "$py has no torch (set SERVER_PY)"
for mod in moshi einops safetensors; do
  if ! spy -c "import $mod" 2>/dev/null; then
    whl=$(find "$wheels" -maxdepth 1 -name "$mod-*.whl" 2>/dev/null | head -1 || true)
    [ -n "$whl" ] || fail "$py lacks $mod and $wheels has no $mod wheel (run --fetch where a registry answers, carry $wheels)"
    "$py" -m pip install -q --no-index --no-deps --target "$site" "$whl"
  fi
done
have=$(spy -c 'from importlib.metadata import version; print(version("moshi"))' 2>/dev/null || echo "?")
[ "$have" = 0.2.13 ] || echo "   note: moshi $have here (this script was written for 0.2.13)"
missing=$(spy -c '
import importlib.util
print(" ".join(m for m in ("aiohttp", "sphn", "sentencepiece", "huggingface_hub", "numpy")
               if importlib.util.find_spec(m) is None))')
[ -z "$missing" ] || fail "$py lacks $missing (moshi.server needs them; set SERVER_PY)"
spy -c 'import torch; print("   torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name() if torch.cuda.is_available() else "")'

# --- random weights (kept in $weights for the next run of the same size)
if [ "$(cat "$weights/size" 2>/dev/null || true)" != "$size" ] || [ ! -s "$weights/moshi.safetensors" ]; then
  say "weights ($size) -> $weights"
  rm -f "$weights/size"
  spy -m scripts.gpu_kyutai_server weights "$weights" --device "$device" --size "$size" \
    >"$out/weights.log" 2>&1 || { tail -20 "$out/weights.log" >&2; fail "writing the weights failed"; }
  echo "$size" >"$weights/size"
fi
cp "$weights/meta.json" "$out/weights-meta.json"
tok=$("$cpy" -c 'from engine.model import fullsize; print(fullsize.ensure_text_tokenizer(32000))') \
  || fail "no 32000-piece tokenizer from engine.model.fullsize (set CLIENT_PY)"
wav="$weights/input-${secs}s.wav"
"$cpy" -m scripts.gpu_kyutai_server wav engine/audio/data/speech.wav "$wav" "$((secs + 5))"

# --- the server (started as a direct child, so that $! is its own pid)
port_open() { "$cpy" -c "import socket; socket.create_connection(('127.0.0.1', $port), 1).close()" 2>/dev/null; }
! port_open || fail "port $port is taken already (another server?): set KYUTAI_PORT"
say "moshi.server on 127.0.0.1:$port ($device)"
PYTHONPATH="$spath" "$py" -u -m scripts.gpu_kyutai_server serve --host 127.0.0.1 --port "$port" --static none \
  --device "$device" --config-path "$weights/config.json" --moshi-weight "$weights/moshi.safetensors" \
  --mimi-weight "$weights/mimi.safetensors" --tokenizer "$tok" >"$out/server.log" 2>&1 &
server=$!
stop_server() {
  if kill -0 "$server" 2>/dev/null; then
    kill -INT "$server" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$server" 2>/dev/null || true
  fi
  wait "$server" 2>/dev/null || true
}
trap stop_server EXIT
t0=$SECONDS
until grep -q "Access the Web UI" "$out/server.log" 2>/dev/null && port_open; do
  kill -0 "$server" 2>/dev/null || { tail -30 "$out/server.log" >&2; fail "moshi.server exited"; }
  [ $((SECONDS - t0)) -lt "$load_s" ] || { tail -30 "$out/server.log" >&2; fail "moshi.server did not listen within $load_s s"; }
  sleep 2
done
kill -0 "$server" 2>/dev/null || { tail -30 "$out/server.log" >&2; fail "moshi.server exited"; }
say "listening after $((SECONDS - t0)) s"

# --- the client, for SECONDS
say "$mt --remote for $secs s"
rc=0
# shellcheck disable=SC2086  # (MOSHI_TUI may be a command with arguments)
$mt --remote "ws://127.0.0.1:$port/api/chat" --headless --seconds "$secs" --input "$wav" \
  --output null --stats-json "$out/client-stats.json" --no-save >"$out/client.log" 2>&1 || rc=$?
echo "   client exit $rc"
sleep 1  # the server logs the connection's end
stop_server
trap - EXIT

# --- the figures
"$cpy" -m scripts.gpu_kyutai_server figures --stats "$out/client-stats.json" \
  --server-log "$out/server.log" --meta "$out/weights-meta.json" --json "$out/kyutai_server.json"
grep -q "connection closed" "$out/server.log" || echo "   note: the server did not log the connection's end"
exit "$rc"
