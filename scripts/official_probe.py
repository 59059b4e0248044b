"""Run Kyutai's official `moshi_mlx/local.py` (the installed package, code unchanged) on the
demo model, with measurement shims, for scripts/compare_official.py.

What is changed around it, and why:
- `models.config_v0_1()` returns the demo LM's config (local.py hard-codes the 7B structure;
  the demo weights are the same structure, shrunk).
- the `spawn` start method: a child forked after the parent imported sounddevice gets no JACK
  callbacks; spawn re-imports this module in each child, so the shims below are installed
  there too.
- shims for `rustymimi`, `sounddevice` and `queue` as local.py sees them: they pass every call
  through and stamp, at the source, the times our telemetry stamps (engine.telemetry.stages):
  t_cap (input callback), t_enc (codes out of the encoder), t_dec (PCM out of the decoder),
  t_play (the output callback took the frame).  The client process writes them to the JSON
  file named by $OFFICIAL_PROBE_OUT once a second and when it is terminated.

Usage, with the project root on PYTHONPATH (stop it with SIGINT, as a user would with Ctrl+C):

    python -m scripts.official_probe DEMO_DIR
    python -m scripts.official_probe --files MOSHI MIMI TOKENIZER [BITS]

--files: real-size Moshi v0.1 weights, e.g. random ones written by `moshi-tui bench step
--random -q 4 --save-weights`; local.py builds v0.1 itself then, and -q BITS;
$OFFICIAL_PROBE_FULLSIZE=1 tells the children.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue as _queue
import signal
import sys
import threading
import time
import types
from pathlib import Path

import rustymimi as _rustymimi
import sounddevice as _sd
from moshi_mlx import local, models

from engine.model.demo import DEMO_LM_CONFIG

_now = time.monotonic_ns
REC: dict = {"pid": os.getpid(), "live": False, "warm_enc": 0, "warm_dec": 0,
             "cap": [], "enc_call": [], "enc": [], "dec_call": [], "dec": [], "out_put": [],
             "play": [], "underruns": 0, "out_callbacks": 0}
_lock = threading.Lock()


def _flush() -> None:
    out = os.environ.get("OFFICIAL_PROBE_OUT")
    if not out:
        return
    with _lock:
        text = json.dumps(REC)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, out)


def _flusher() -> None:
    while True:
        time.sleep(1.0)
        _flush()


def _on_term(signum, frame):
    _flush()
    os._exit(0)


class ProbeStreamTokenizer:
    """rustymimi.StreamTokenizer, every call passed through and stamped."""

    def __init__(self, *args, **kwargs):
        self._t = _rustymimi.StreamTokenizer(*args, **kwargs)
        # only local.py's client makes one: it is the process that records
        signal.signal(signal.SIGTERM, _on_term)
        signal.signal(signal.SIGINT, _on_term)
        threading.Thread(target=_flusher, daemon=True).start()

    def encode(self, pcm):
        REC["enc_call"].append(_now())
        return self._t.encode(pcm)

    def get_encoded(self):
        r = self._t.get_encoded()
        if r is not None:
            REC["enc"].append(_now())
        return r

    def decode(self, codes):
        REC["dec_call"].append(_now())
        return self._t.decode(codes)

    def get_decoded(self):
        r = self._t.get_decoded()
        if r is not None:
            REC["dec"].append(_now())
        return r


def _input_stream(*args, callback, **kwargs):
    def cb(indata, frames, t, status):
        REC["cap"].append(_now())
        callback(indata, frames, t, status)

    # local.py makes the streams after full_warmup(): what follows is live
    with _lock:
        REC["live"] = True
        REC["warm_enc"] = len(REC["enc"])
        REC["warm_dec"] = len(REC["dec"])
    return _sd.InputStream(*args, callback=cb, **_device("input", kwargs))


def _output_stream(*args, callback, **kwargs):
    def cb(outdata, frames, t, status):
        REC["out_callbacks"] += 1
        callback(outdata, frames, t, status)

    return _sd.OutputStream(*args, callback=cb, **_device("output", kwargs))


def _device(kind: str, kwargs: dict) -> dict:
    """local.py opens the default devices; the same JACK devices as moshi-tui's run instead
    (OFFICIAL_PROBE_INPUT / _OUTPUT, PortAudio indices), where PortAudio's default is another
    host API (ALSA, where the machine has its configuration)."""
    index = os.environ.get(f"OFFICIAL_PROBE_{kind.upper()}")
    if index is not None and kwargs.get("device") is None:
        kwargs = dict(kwargs, device=int(index))
    return kwargs


class _OutputQueue(_queue.Queue):
    """local.py's output_queue: decoded PCM in, the output callback takes it."""

    def put_nowait(self, item):
        REC["out_put"].append(_now())
        return super().put_nowait(item)

    def get(self, block=True, timeout=None):
        try:
            item = super().get(block, timeout)
        except _queue.Empty:
            if REC["play"]:
                REC["underruns"] += 1
            raise
        REC["play"].append(_now())
        return item


_made_queues = [0]


def _queue_factory(*args, **kwargs):
    # local.client() makes input_queue first, then output_queue
    _made_queues[0] += 1
    return _OutputQueue(*args, **kwargs) if _made_queues[0] == 2 else _queue.Queue(*args, **kwargs)


def install() -> None:
    if os.environ.get("OFFICIAL_PROBE_FULLSIZE") != "1":
        models.config_v0_1 = lambda: models.LmConfig.from_config_dict(DEMO_LM_CONFIG)
    local.rustymimi = types.SimpleNamespace(StreamTokenizer=ProbeStreamTokenizer)
    local.sd = types.SimpleNamespace(InputStream=_input_stream, OutputStream=_output_stream)
    local.queue = types.SimpleNamespace(Queue=_queue_factory, Empty=_queue.Empty)


install()  # here and, through spawn's re-import of this file, in local.py's two children

if __name__ == "__main__":
    multiprocessing.set_start_method("spawn", force=True)
    if sys.argv[1] == "--files":
        moshi, mimi, tok, *bits = sys.argv[2:]
        os.environ["OFFICIAL_PROBE_FULLSIZE"] = "1"
        sys.argv = [sys.argv[0], "--moshi-weight", moshi, "--mimi-weight", mimi,
                    "--tokenizer", tok] + (["-q", bits[0]] if bits else [])
    else:
        demo = Path(sys.argv[1])
        sys.argv = [sys.argv[0], "--moshi-weight", str(demo / "model.safetensors"),
                    "--mimi-weight", str(demo / "tokenizer-e351c8d8-checkpoint125.safetensors"),
                    "--tokenizer", str(demo / "tokenizer_spm_32k_3.model")]
    local.main()
