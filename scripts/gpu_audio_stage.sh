#!/usr/bin/env bash
# A dummy sound card on a machine with no package registry and no audio (the GPU machine
# docs/benchmarks.md's NVIDIA figures come from), for scripts/compare_official.py there:
#   scripts/gpu_audio_stage.sh SRC_DIR [DEST_DIR] [SITE_DIR]
# SRC_DIR holds Debian packages (jackd2, libjack-jackd2-0, libportaudio2, libasound2,
# libopus0 and what jackd links to) and wheels (sounddevice, JACK-Client, cffi, pycparser),
# fetched elsewhere with `apt-get download` and `pip download`.  The packages are unpacked
# into DEST_DIR (default /tmp/audio), not into /: the libraries the machine already has are
# dropped from the copy so that its own stay in use; the wheels go into SITE_DIR (default
# /tmp/site).  Then `. DEST_DIR/env.sh` puts jackd on the PATH, the libraries on
# LD_LIBRARY_PATH, JACK_DRIVER_DIR on the unpacked drivers and ALSA_CONFIG_PATH on ALSA's
# configuration, and a sitecustomize.py on PYTHONPATH makes ctypes.util.find_library (how
# sounddevice and JACK-Client find PortAudio and libjack) look in LD_LIBRARY_PATH first.
set -euo pipefail
src=${1:?usage: gpu_audio_stage.sh SRC_DIR [DEST_DIR] [SITE_DIR]}
dest=${2:-/tmp/audio}
site=${3:-/tmp/site}
mkdir -p "$dest/root" "$dest/shim" "$site"
for deb in "$src"/*.deb; do
  dpkg-deb -x "$deb" "$dest/root"
done
libdirs=""
for d in "$dest/root/usr/lib/x86_64-linux-gnu" "$dest/root/lib/x86_64-linux-gnu"; do
  [ -d "$d" ] || continue
  for f in "$d"/lib*.so.*; do
    name=$(basename "$f")
    if ldconfig -p | grep -q "^[[:space:]]$name "; then rm -f "$(readlink -f "$f")" "$f"; fi
  done
  libdirs="$libdirs${libdirs:+:}$d"
done
python3 -m pip install -q --no-index --no-deps --target "$site" "$src"/*.whl
cat >"$dest/shim/sitecustomize.py" <<'EOF'
import ctypes.util
import glob
import os

_find_library = ctypes.util.find_library


def find_library(name):
    for d in filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)):
        hits = sorted(glob.glob(os.path.join(d, f"lib{name}.so*")))
        if hits:
            return hits[0]
    return _find_library(name)


ctypes.util.find_library = find_library
EOF
cat >"$dest/env.sh" <<EOF
export PATH="$dest/root/usr/bin:\$PATH"
export LD_LIBRARY_PATH="$libdirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export JACK_DRIVER_DIR="$dest/root/usr/lib/x86_64-linux-gnu/jack"
export PYTHONPATH="$dest/shim:$site\${PYTHONPATH:+:\$PYTHONPATH}"
EOF
# ALSA's configuration (libasound2-data) is unpacked, not in /usr/share/alsa where alsa-lib
# looks; without it PortAudio's ALSA device scan fails an assertion and aborts the process at
# `import sounddevice` (seen on the GPU machine)
if [ -f "$dest/root/usr/share/alsa/alsa.conf" ]; then
  echo "export ALSA_CONFIG_PATH=\"$dest/root/usr/share/alsa/alsa.conf\"" >>"$dest/env.sh"
fi
echo "audio staged in $dest (. $dest/env.sh): $(ls "$dest/root/usr/bin" | tr '\n' ' ')"
