"""`bench codec --codec mlx`: MLX's Mimi (engine.pipeline.codec_mlx) per 80 ms frame, through
the codec's own interface as the session's loops use it, and its agreement with rustymimi."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from engine.bench.measure import speech_frames
from engine.model.graph.mimi import ENCODER_STEP, MimiStreams
from engine.pipeline.codec_mlx import MlxMimiCodec
from engine.telemetry.stages import percentiles


def run_codec_mlx(mimi_path: str | Path, frames: int = 50, *, compare_rustymimi: bool = False,
          poll_s: float = 0.0002, **codec_kwargs) -> dict:
    """Per-frame times through the codec's interface, as a session's loops see them: a whole
    frame's encode (submit -> codes), an early-encoded frame (the head's own work, then the
    rest submitted 40 ms later -> codes), a decode; plus memory after `frames` frames and,
    with `compare_rustymimi`, the agreement with rustymimi on the same speech."""
    def wait(getter, t0):
        while True:
            out = getter()
            if out is not None:
                return out, (time.perf_counter() - t0) * 1000.0
            time.sleep(poll_s)

    pcm = speech_frames(frames)
    codec = MlxMimiCodec(mimi_path, **codec_kwargs)
    try:
        warm_ms = codec.warm()
        cpu0 = time.process_time()
        t, codes, _ = _round_trips(codec, pcm, wait)
        t.update(head=[], rest=[])
        cpu_ms = 1000.0 * (time.process_time() - cpu0) / len(pcm)
        mem_whole = codec.run_in_worker(_memory)
        codec.reset()
        for i, f in enumerate(pcm):  # the same speech again, each frame split
            t0 = time.perf_counter()
            codec.encode(f[:ENCODER_STEP])
            codec.run_in_worker(lambda s: None)
            head_ms = (time.perf_counter() - t0) * 1000.0
            t["head"].append(head_ms)
            time.sleep(max(0.0, 0.040 - head_ms / 1000.0))
            t0 = time.perf_counter()
            codec.encode(f[ENCODER_STEP:])
            c, ms = wait(codec.get_encoded, t0)
            t["rest"].append(ms)
            if not np.array_equal(c, codes[i]):
                raise AssertionError(f"frame {i}: split encode gave other codes")
        out = {
            "mimi": str(mimi_path), "frames": frames, "options": {k: str(v) for k, v in
                                                                codec_kwargs.items()},
            "load_s": round(codec.load_s, 2), "warm_ms": round(warm_ms, 1),
            **{f"{k}_ms": percentiles(v) for k, v in t.items()},
            "cpu_ms_per_frame": round(cpu_ms, 2),
            "mlx_device": codec.run_in_worker(_device),
            "memory_after": mem_whole,
            "split_codes_equal_whole": True,
        }
    finally:
        codec.close()
    if compare_rustymimi:
        import rustymimi

        tok = rustymimi.StreamTokenizer(str(mimi_path))
        rt, ref, ref_pcm = _round_trips(tok, pcm, wait)
        mine, ref = np.concatenate(codes, axis=1), np.concatenate(ref, axis=1)
        out["rustymimi_ms"] = {k: percentiles(v) for k, v in rt.items()}
        agree = mine == ref
        out["codes_equal_to_rustymimi"] = {
            "all": round(float(agree.mean()), 4),
            "per_codebook": [round(float(x), 4) for x in agree.mean(axis=1)]}
        # rustymimi's codes through this decoder: the decoders' agreement
        codec = MlxMimiCodec(mimi_path, **codec_kwargs)
        try:
            mine_pcm = []
            for i in range(ref.shape[1]):
                codec.decode(np.ascontiguousarray(ref[:, i:i + 1].T))
                mine_pcm.append(wait(codec.get_decoded, time.perf_counter())[0])
        finally:
            codec.close()
        a, b = np.concatenate(ref_pcm), np.concatenate(mine_pcm)
        err = float(np.sum((a - b) ** 2))
        out["decoded_vs_rustymimi"] = {
            "snr_db": round(10 * np.log10(float(np.sum(a ** 2)) / max(err, 1e-30)), 1),
            "correlation": round(float(np.corrcoef(a, b)[0, 1]), 6)}
    return out


def _round_trips(codec, pcm, wait) -> tuple[dict, list, list]:
    """Each frame encoded whole, then its codes decoded, through a codec's streaming interface
    (rustymimi's or ours): ({"encode": ms, "decode": ms}, codes, decoded PCM)."""
    times: dict = {"encode": [], "decode": []}
    codes, out = [], []
    for f in pcm:
        t0 = time.perf_counter()
        codec.encode(f)
        c, ms = wait(codec.get_encoded, t0)
        times["encode"].append(ms)
        codes.append(c)
        t0 = time.perf_counter()
        codec.decode(np.ascontiguousarray(c.reshape(1, -1)[:, :8]))
        p, ms = wait(codec.get_decoded, t0)
        times["decode"].append(ms)
        out.append(np.asarray(p, np.float32).reshape(-1))
    return times, codes, out


def _device(s: MimiStreams) -> str:
    import mlx.core as mx

    return str(mx.default_device())


def run_codec_mlx_isolated(mimi_weight: Path | str, frames: int = 100, *,
                           progress=None) -> dict:
    """`run_codec_mlx` in a spawned process (the floor `bench pipeline` measures first, in
    run_codec's shape: see `as_floor`), so that its Mimi never inflates the memory figures of
    the session that runs afterwards in this process."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if progress is not None:
        progress(f"codec: MLX's Mimi, {frames} frames (separate process)")
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        return as_floor(ex.submit(run_codec_mlx, str(mimi_weight), frames).result())


def as_floor(r: dict) -> dict:
    """The figures `bench pipeline`'s compute floor reads, in run_codec's shape (the MLX codec
    has one API, so "sync" and "stream" are the same measurement)."""
    api = {"api": "MlxMimiCodec", "frames": r["frames"], "encode_ms": r["encode_ms"],
           "encode_head_ms": r["head_ms"], "encode_rest_ms": r["rest_ms"],
           "decode_ms": r["decode_ms"], "cpu_ms_per_frame": r["cpu_ms_per_frame"]}
    return {"mimi_weight": r["mimi"], "codec": "mlx", "sync": api, "stream": dict(api), "mlx": r}


def _memory(s: MimiStreams) -> dict:
    import mlx.core as mx

    get = getattr(mx, "get_active_memory", None) or mx.metal.get_active_memory
    enc, dec = s.cache_nbytes()
    return {"kv_cache_bytes": {"encoder": enc, "decoder": dec},
            "seanet_state_bytes": int(sum(a.nbytes for a in s.state_arrays())) - enc - dec,
            "mlx_active_bytes": int(get())}


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m engine.bench.codec_mlx",
        description="Time MLX Mimi per frame through MlxMimiCodec (and compare with rustymimi).")
    p.add_argument("mimi", help="Mimi safetensors (PyTorch names, as rustymimi reads)")
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--dtype", default=None, help="e.g. bfloat16 (default float32)")
    p.add_argument("--device", choices=("cpu", "gpu"), default=None)
    p.add_argument("--whole-frame-calls", action="store_true",
                   help="split_steps=False: a whole frame in one encoder call")
    p.add_argument("--compare-rustymimi", action="store_true")
    a = p.parse_args(argv)
    kw = {"dtype": a.dtype, "device": a.device, "split_steps": not a.whole_frame_calls}
    out = run_codec_mlx(a.mimi, a.frames, compare_rustymimi=a.compare_rustymimi, **kw)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
