#!/usr/bin/env bash
# Regenerates engine/audio/data/speech.wav, the bundled speech fixture (~12-15 s of synthetic English,
# 24 kHz mono 16-bit PCM).  Needs espeak-ng and sox (Debian: apt-get install espeak-ng sox;
# macOS: brew install espeak-ng sox).  The WAV is committed; this script only documents and
# reproduces it (espeak-ng versions may differ slightly in the exact samples).
set -euo pipefail
cd "$(dirname "$0")/.."
out=engine/audio/data/speech.wav
mkdir -p engine/audio/data
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
text="Hello, can you hear me? I would like to book a table for two, tomorrow evening. \
The weather has been strange this week: sunny on Monday, then heavy rain. \
What do you think about learning the piano at forty?"
espeak-ng -v en-us -s 160 -w "$tmp/raw.wav" "$text"
# 24 kHz mono 16-bit PCM; -D (no dither) keeps the output reproducible
sox "$tmp/raw.wav" -D -r 24000 -c 1 -e signed-integer -b 16 "$out"
sox --i "$out"

# A second talker, another voice (the user speaking while Moshi speaks: the echo-cancellation
# double-talk tests and `bench aec`)
near=tests/data/second_talker.wav
mkdir -p tests/data
text2="The boats on the river were painted red and green. After the walk we had soup, \
bread and cheese with friends, and talked about music, trains and the best places to swim."
espeak-ng -v en-us+f3 -s 150 -w "$tmp/raw2.wav" "$text2"
sox "$tmp/raw2.wav" -D -r 24000 -c 1 -e signed-integer -b 16 "$near"
sox --i "$near"
