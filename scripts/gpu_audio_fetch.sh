#!/usr/bin/env bash
# What scripts/gpu_audio_stage.sh unpacks on a machine with no package registry and no audio
# (the GPU machine), fetched here, on a Debian/Ubuntu machine that has one:
#   scripts/gpu_audio_fetch.sh [OUT_DIR]        (default .gpu/audio, git-ignored)
# Debian packages: jackd2 and PortAudio with what they link to (apt-get download, no root
# needed; the stage step later drops the libraries the target already has), without the
# alternatives that would overwrite the ones jackd2 links to (jack1's libjack0, libelogind0), nor the
# interpreters and tools their maintainer scripts want (perl, python3, dpkg, debconf, tar);
# wheels for Python 3.12 x86_64: sounddevice, JACK-Client, cffi, pycparser at the lock's pins.
# Then on the target, from the project root:
#   bash scripts/gpu_audio_stage.sh .gpu/audio && . /tmp/audio/env.sh
set -euo pipefail
out=${1:-.gpu/audio}
here=$(cd "$(dirname "$0")/.." && pwd)
lock="$here/locks/linux-x86_64.txt"
pin() { grep -iE "^$1==" "$lock" | head -1; }
if [ -d "$here/.git" ] && ! grep -qxF "/.gpu/" "$here/.git/info/exclude" 2>/dev/null; then
  echo "/.gpu/" >> "$here/.git/info/exclude"
fi
rm -rf "$out"; mkdir -p "$out"
skip='^(perl|perl-base|perl-modules-.*|libperl.*|python3.*|libpython3.*|dpkg|debconf|cdebconf|tar|install-info|mailcap|media-types|mime-support|libdebian-installer4|libnewt.*|libslang2|libtextwrap1|readline-common|libjack0|libelogind0)$'
pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
         --no-replaces --no-enhances --no-pre-depends jackd2 libportaudio2 \
       | grep -E '^[a-z0-9]' | sort -u | grep -vE "$skip")
(cd "$out" && apt-get download $pkgs >/dev/null)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$out" \
  "$(pin sounddevice)" "$(pin jack-client)" "$(pin cffi)" "$(pin pycparser)"
echo "$(ls "$out"/*.deb | wc -l) packages and $(ls "$out"/*.whl | wc -l) wheels in $out ($(du -sh "$out" | cut -f1))"
