#!/usr/bin/env bash
# Create .venv and install moshi-tui with its exact pins (locks/<platform>.txt) and the dev tools.
#
#   ./scripts/setup.sh            # Linux x86_64 with an NVIDIA GPU: MLX's CUDA backend; else CPU
#   ./scripts/setup.sh --cuda     # the CUDA variant whatever this machine has
#   ./scripts/setup.sh --cpu      # mlx[cpu] even where there is a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
variant=auto
for arg in "$@"; do
  case "$arg" in
    --cuda) variant=cuda ;;
    --cpu) variant=cpu ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (use --cuda or --cpu)" >&2; exit 2 ;;
  esac
done
platform="$(uname -s)-$(uname -m)"
if [ "$variant" = auto ]; then
  variant=cpu
  # An NVIDIA driver that answers: the GPU is usable from here.
  if [ "$platform" = Linux-x86_64 ] && command -v nvidia-smi >/dev/null 2>&1 \
      && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    variant=cuda
  fi
fi
if [ "$variant" = cuda ] && [ "$platform" != Linux-x86_64 ]; then
  echo "setup.sh: the CUDA variant is for Linux x86_64 (this is $platform)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
case "$variant-$platform" in
  cuda-Linux-x86_64) LOCK=locks/linux-x86_64-cuda.txt ;;
  cpu-Linux-x86_64) LOCK=locks/linux-x86_64.txt ;;
  cpu-Darwin-arm64) LOCK=locks/macos-arm64.txt ;;
  *) LOCK="" ;;
esac
if [ "$variant" = cuda ]; then
  # mlx 0.32 with its CUDA 13 backend; moshi_mlx 0.3.0 runs on it but declares mlx<0.27, so it
  # goes in without its dependencies (the lock has them all).
  .venv/bin/python -m pip install -q -r "$LOCK"
  .venv/bin/python -m pip install -q --no-deps moshi_mlx==0.3.0
  .venv/bin/python -m pip install -q --no-deps -e .
elif [ -n "$LOCK" ]; then
  # Exact versions of everything (uv pip compile output for this platform).
  .venv/bin/python -m pip install -q -r "$LOCK"
  .venv/bin/python -m pip install -q --no-deps -e .
else
  echo "no lock file for $platform: installing from pyproject pins" >&2
  .venv/bin/python -m pip install -q -e '.[dev]'
fi
device=$(.venv/bin/python -c 'import mlx.core as mx; print(mx.default_device())' 2>/dev/null || echo "?")
echo "moshi-tui installed in .venv ($variant variant, MLX on $device; run: .venv/bin/moshi-tui --demo)"
