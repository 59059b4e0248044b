"""Mimi on MLX as the client's audio codec: a drop-in for `rustymimi.StreamTokenizer`.

    codec = MlxMimiCodec(mimi_path)          # the PyTorch-named safetensors rustymimi loads
    codec.warm()                             # first live frame fast; then a fresh state
    codec.encode(pcm)                        # 1920 samples, or 960 + 960 (early encode)
    codec.get_encoded()                      # uint32 (8, 1), or None
    codec.decode(codes)                      # uint32 (1, 8), as LmGen.last_audio_tokens()
    codec.get_decoded()                      # float32 (1920,), or None
    codec.close()

The submit calls never block: they copy their input into a queue that one worker thread
drains; the getters pop what is ready.  Encoded codes come out in submission order, decoded
PCM likewise; a 960-sample first half yields no code frame, the frame's codes come once its
second half is in.  The shapes are rustymimi 0.4.1's (checked against it): `get_encoded`
(8, n) for the n code frames one call completed, `get_decoded` a flat (1920 * n,).

Threads: ONE worker thread owns every MLX object (the model is built, loaded and run there)
and serialises encode and decode in submission order.  Why not rustymimi's two threads:
- mlx < 0.31.2 (0.26.5 here) is not thread-safe: evaluation from two threads at once shares
  the scheduler's streams and command encoders (ml-explore/mlx#2067, #2133, both closed only
  with 0.31.2's "thread safety support").
- From 0.31.2 on (0.32.4 on the GPU machine) streams and their command encoders are thread
  affine (mlx#3281, #3348; CPU too with #3537): each thread gets its own default stream and an
  array whose graph was built on another thread's stream fails to evaluate ("There is no
  Stream(gpu, N) in current thread", mlx#3727, mflux#502).  Lazily loaded weights and the
  derived arrays Mimi computes at load (codebook embeddings, expanded transposed-conv
  weights) are such arrays, so the loading thread must also be the thread that runs the model.
  Two threads on one model would need `new_thread_unsafe_stream` (0.32 only) plus our own
  locking, i.e. serialisation again.
- On one GPU the two sides are a few ms of small kernels each, which the device runs one
  after the other anyway; serialising them costs at most one side's time of latency.
So every MLX call happens in the worker, for both versions, with the default device (GPU
when MLX has one) or the `device` given; the calling threads only touch numpy.

Streaming semantics (and where they differ from stock moshi_mlx):
- The encoder runs in 40 ms steps (one 25 Hz step of its transformer); a 1920-sample frame is
  two such steps, run exactly as its two halves would be, so early encode (960 + 960) gives
  the codes of whole frames bit for bit, by construction.  (`split_steps=False` runs a whole
  frame as one two-step call instead: fewer kernel launches, same maths, not bit-identical.)
- Attention: every query sees itself and the `context` (250) positions before it, never a
  later one, as rustymimi does (moshi-core's `get_mask`; candle trims the keys to the last
  t + context, then masks).  Stock moshi_mlx trims the keys the same way (so it does not
  attend to everything) but passes no mask: in a call with t = 2 new positions (the decoder's
  two 25 Hz steps per frame, the encoder's two per whole frame) both queries see the same
  252 keys, so the first attends to the second (the future) and the second to one position
  more than the context.  With t = 1 there is nothing to mask and stock and this agree bit for
  bit (tested).  Measured on the demo Mimi, stock moshi_mlx against rustymimi: 97.5 % of the
  codes (frame 0 differs) and a decoded SNR of 72 dB; this module: 100 % and 124 dB.
- The MLP uses the exact (erf) GELU as rustymimi does (candle's gelu_erf); moshi_mlx uses
  `nn.gelu_approx` (`exact_gelu=False` restores it).  On the demo Mimi (random weights, layer
  scales of 0.01) the choice changes no code; with trained weights it may.

Bounded memory: moshi_mlx's KVCache keeps every position (grows 32 KiB per position and
transformer in f32: ~230 MB each after 3600 frames), although attention only reads the last
context + t.  `SlidingKVCache` keeps the keys/values in time order in a buffer of
context + slack positions; when the buffer is full, the last `context` are moved to the front.
It returns exactly the positions the stock cache returns after the trim, in the same order,
so the outputs are bit-identical (tested past the context with a small `context`).  The
SEANet streaming states (conv and transposed-conv overlaps, streaming adds) are bounded by the
kernel sizes: checked too.

Warm-up: `warm()` pushes silent frames through the public interface, whole and in halves,
then resets the streaming state to that of a freshly loaded codec (kernels, JIT caches and
allocator pools stay warm).  `engine.pipeline.codec.warm_codec(codec)` works unchanged too, but, as
with rustymimi, leaves those silent frames in the codec's past.

dtype: float32 by default (CPU, and what rustymimi runs).  bfloat16 (`dtype="bfloat16"`)
casts all but the quantizer (the argmin over codebook distances stays float32), but drifts:
on the demo Mimi, 16 frames, bf16 against rustymimi gave 83 % of the codes (the first
codebook 100 %, the others 75-81 %) and a decoded SNR of 32 dB.  Keep float32 on the GPU too
(Mimi is ~80 M parameters: per-step cost is kernel launches, not bandwidth) unless bf16
proves out on the real weights: `python -m engine.bench.codec_mlx MIMI --dtype bfloat16
--compare-rustymimi` measures exactly that (and the per-frame times).

Importing this module is cheap: numpy only; mlx and moshi_mlx load in the worker.
"""

from __future__ import annotations

import collections
import json
import queue
import re
import struct
import threading
import time
import weakref
from pathlib import Path

import numpy as np

SAMPLE_RATE = 24000
FRAME = 1920  # one 12.5 Hz code frame (80 ms)
STEP = 960  # one 25 Hz step of Mimi's encoder transformer (40 ms)


def mimi_file_codebooks(path: str | Path) -> int:
    """How many codebooks a PyTorch-named Mimi safetensors file holds (from its header)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    rest = {int(m.group(1)) for k in header
            if (m := re.search(r"quantizer\.rvq_rest\.vq\.layers\.(\d+)\.", k))}
    if not any(k.startswith("quantizer.rvq_first.") for k in header):
        raise ValueError(f"{path}: not a Mimi checkpoint (no quantizer.rvq_first)")
    return 1 + len(rest)


# ----------------------------------------------------------------------------------- caches


class SlidingKVCache:
    """A transformer layer's keys/values, holding only what attention can still read.

    `update_and_fetch(k, v)` (shapes (B, H, t, D)) returns the last min(offset, window + t)
    positions in time order: the ones the stock moshi_mlx attention keeps after its trim to
    t + context, i.e. `window` must be the transformer's context.  Storage: one buffer of
    `window + slack` positions (at least window + t); when the new positions do not fit, the
    last `window` are copied to its front (once every slack / t calls)."""

    def __init__(self, window: int, slack: int = 64):
        self.window = window
        self.slack = max(1, slack)
        self.keys = None
        self.values = None
        self.offset = 0  # positions seen since the last reset (the RoPE offset)
        self._n = 0  # valid positions at the front of the buffers (the most recent ones)

    def update_and_fetch(self, keys, values):
        import mlx.core as mx

        b, h, t, _ = keys.shape
        if self.keys is None:
            cap = self.window + max(self.slack, t)
            self.keys = mx.zeros((b, h, cap, keys.shape[3]), keys.dtype)
            self.values = mx.zeros((b, h, cap, values.shape[3]), values.dtype)
        cap = self.keys.shape[2]
        if self._n + t > cap:
            keep = min(self._n, self.window)
            if keep + t > cap:
                cap = keep + t
            lo = self._n - keep

            def moved(buf):
                pad = mx.zeros((b, h, cap - keep, buf.shape[3]), buf.dtype)
                return mx.concatenate([buf[:, :, lo:self._n, :], pad], axis=2)

            self.keys, self.values = moved(self.keys), moved(self.values)
            self._n = keep
        n = self._n
        self.keys[:, :, n:n + t, :] = keys
        self.values[:, :, n:n + t, :] = values
        self._n = n + t
        self.offset += t
        lo = max(0, self._n - (self.window + t))
        return self.keys[:, :, lo:self._n, :], self.values[:, :, lo:self._n, :]

    def reset(self):
        self.keys = None
        self.values = None
        self.offset = 0
        self._n = 0

    @property
    def state(self):
        return self.keys, self.values


def make_caches(transformer, kind: str = "bounded", slack: int = 64) -> list:
    """Layer caches for a moshi_mlx ProjectedTransformer: "bounded" (SlidingKVCache) or
    "unbounded" (moshi_mlx's own growing KVCache, for comparisons)."""
    from moshi_mlx.modules.kv_cache import KVCache

    cfg = transformer.transformer.cfg
    n_kv = cfg.num_heads // cfg.kv_repeat
    if kind == "bounded":
        return [SlidingKVCache(cfg.context, slack) for _ in transformer.transformer.layers]
    if kind == "unbounded":
        return [KVCache(head_dim=cfg.head_dim, n_kv_heads=n_kv)
                for _ in transformer.transformer.layers]
    raise ValueError(f"cache kind {kind!r}: 'bounded' or 'unbounded'")


def cache_nbytes(caches) -> int:
    return sum(int(c.keys.nbytes + c.values.nbytes) for c in caches if c.keys is not None)


# ----------------------------------------------------------------------------------- transformer


def transformer_step(pt, xs, caches, *, exact_gelu: bool = True):
    """One streaming call of a moshi_mlx ProjectedTransformer (conv layout (B, C, t)).

    The stock layer maths (norm1, in_proj, RoPE at the cache offset, keys trimmed to the last
    t + context, out_proj, layer scales, MLP), plus the causal, context-limited mask for
    t > 1 that the stock code lacks.  The mask does not depend on the layer (all caches share
    the offset)."""
    import mlx.core as mx
    import mlx.nn as nn
    from moshi_mlx.modules.transformer import MlpNoGating

    cfg = pt.transformer.cfg
    context = cfg.context
    if pt.conv_layout:
        xs = xs.swapaxes(1, 2)
    if pt.input_proj is not None:
        xs = pt.input_proj(xs)
    b, t, hd = xs.shape
    mask = None
    if t > 1:
        past = caches[0].offset
        k_len = min(past + t, t + context)  # what each layer attends over, after the trim
        kpos = mx.arange(past + t - k_len, past + t)[None, :]
        qpos = mx.arange(past, past + t)[:, None]
        mask = (kpos <= qpos) & (kpos >= qpos - context)
    nh, hdim = cfg.num_heads, cfg.head_dim
    for layer, cache in zip(pt.transformer.layers, caches):
        attn = layer.self_attn
        n1 = layer.norm1(xs)
        qkv = attn.in_proj(n1).reshape(b, t, 3, nh, hdim)
        q = qkv[:, :, 0].transpose(0, 2, 1, 3)
        k = qkv[:, :, 1].transpose(0, 2, 1, 3)
        v = qkv[:, :, 2].transpose(0, 2, 1, 3)
        if attn.rope is not None:
            q = attn.rope(q, offset=cache.offset)
            k = attn.rope(k, offset=cache.offset)
        k, v = cache.update_and_fetch(k, v)
        k_len = k.shape[2]
        k_target = t + min(context, k_len - t)
        if k_target < k_len:
            k = k[:, :, k_len - k_target:]
            v = v[:, :, k_len - k_target:]
        a = mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.scale, mask=mask)
        a = attn.out_proj(a.transpose(0, 2, 1, 3).reshape(b, t, hd))
        xs = xs + layer.layer_scale_1(a)
        n2 = layer.norm2(xs)
        if exact_gelu and isinstance(layer.gating, MlpNoGating):
            m = layer.gating.linear2(nn.gelu(layer.gating.linear1(n2)))
        else:
            m = layer.gating(n2)
        xs = xs + layer.layer_scale_2(m)
    out = xs
    proj = pt.output_projs[0]
    if proj is not None:
        out = proj(out)
    if pt.conv_layout:
        out = out.swapaxes(1, 2)
    return out


# ----------------------------------------------------------------------------------- the model


def load_mimi(mimi_path: str | Path, num_codebooks: int = 8, *, context: int | None = None,
              dtype=None):
    """moshi_mlx's Mimi with the PyTorch-named weights rustymimi reads, `num_codebooks` used.

    The file holds 32 codebooks; `load_pytorch_weights` is strict about the model having all
    of them, so the model is built with the file's count and the quantizer cut down after.
    `context` overrides the transformers' attention window (tests).  `dtype` (e.g.
    mx.bfloat16) casts everything but the quantizer."""
    import mlx.core as mx
    from moshi_mlx.models.mimi import Mimi, mimi_202407
    from moshi_mlx.modules.conv import ConvTranspose1d
    from moshi_mlx.modules.quantization import EuclideanCodebook

    in_file = mimi_file_codebooks(mimi_path)
    if not 1 <= num_codebooks <= in_file:
        raise ValueError(f"{mimi_path} has {in_file} codebooks, {num_codebooks} asked for")
    cfg = mimi_202407(in_file)
    if context is not None:
        cfg.transformer.context = int(context)
    mimi = Mimi(cfg)
    mimi.load_pytorch_weights(str(mimi_path), strict=True)
    q = mimi.quantizer
    q.rvq_rest.vq.layers = q.rvq_rest.vq.layers[: num_codebooks - 1]
    q._nq = num_codebooks
    cfg.quantizer_nq = num_codebooks
    if dtype is not None and dtype != mx.float32:
        mimi.set_dtype(dtype)
        q.set_dtype(mx.float32)
    derived = []
    for m in mimi.modules():
        if isinstance(m, (EuclideanCodebook, ConvTranspose1d)):
            m.update_in_place()  # (private arrays derived from the weights, in their dtype)
            derived.extend(
                [m._embedding, m._c2] if isinstance(m, EuclideanCodebook) else [m._expanded_weight])
    mx.eval(mimi.parameters(), derived)
    return mimi


class MimiStreams:
    """The streaming encoder and decoder around one Mimi, synchronous (no threads): the worker
    of MlxMimiCodec drives one; tests may drive one directly.  Not thread-safe."""

    def __init__(self, mimi, *, cache: str = "bounded", exact_gelu: bool = True,
                 split_steps: bool = True, slack: int = 64):
        import mlx.core as mx
        from moshi_mlx.modules.conv import StreamableConv1d, StreamableConvTranspose1d
        from moshi_mlx.modules.seanet import StreamingAdd

        self.mx = mx
        self.mimi = mimi
        self.num_codebooks = mimi.quantizer._nq
        self.exact_gelu = exact_gelu
        self.split_steps = split_steps
        self.enc_caches = make_caches(mimi.encoder_transformer, cache, slack)
        self.dec_caches = make_caches(mimi.decoder_transformer, cache, slack)
        self._streaming = [m for m in mimi.modules()
                           if isinstance(m, (StreamableConv1d, StreamableConvTranspose1d,
                                             StreamingAdd))]
        self.dtype = mimi.encoder.init_conv1d.conv.conv.weight.dtype
        self._residue = np.zeros(0, np.float32)
        self.reset()

    def reset(self) -> None:
        """The state of a freshly loaded codec."""
        m = self.mimi
        m.encoder.reset_state()
        m.decoder.reset_state()
        m.downsample.reset_state()
        m.upsample.reset_state()
        for s in self._streaming:  # (SeanetResnetBlock.reset_state skips its StreamingAdd)
            if hasattr(s, "_lhs"):
                s._lhs = s._rhs = None
        for c in self.enc_caches + self.dec_caches:
            c.reset()
        self._residue = np.zeros(0, np.float32)

    def state_arrays(self) -> list:
        out = []
        for s in self._streaming:
            for name in ("_prev_xs", "_prev_ys", "_lhs", "_rhs"):
                a = getattr(s, name, None)
                if a is not None:
                    out.append(a)
        for c in self.enc_caches + self.dec_caches:
            if c.keys is not None:
                out += [c.keys, c.values]
        return out

    def state_shapes(self) -> list:
        """The shapes of the SEANet streaming states, in module order (None: empty)."""
        out = []
        for s in self._streaming:
            for name in ("_prev_xs", "_prev_ys", "_lhs", "_rhs"):
                if hasattr(s, name):
                    a = getattr(s, name)
                    out.append(None if a is None else tuple(a.shape))
        return out

    # -- encode
    def _encode_steps(self, pcm: np.ndarray):
        """`pcm`: a whole number of 960-sample steps, in one transformer call."""
        mx, m = self.mx, self.mimi
        x = mx.array(pcm.reshape(1, 1, -1))
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        h = m.encoder.step(x)
        h = transformer_step(m.encoder_transformer, h, self.enc_caches,
                             exact_gelu=self.exact_gelu)
        h = m.downsample.step(h)
        if h.shape[-1] == 0:
            return h, None
        return h, m.quantizer.encode(h.astype(mx.float32))  # (1, K, n) uint32

    def encode(self, pcm: np.ndarray) -> np.ndarray | None:
        """Feed samples; the codes (K, n) of the code frames they complete, or None."""
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if self._residue.size:
            pcm = np.concatenate([self._residue, pcm])
        n = pcm.size // STEP
        self._residue = pcm[n * STEP:].copy()
        if n == 0:
            return None
        chunks = [pcm[i * STEP:(i + 1) * STEP] for i in range(n)] if self.split_steps \
            else [pcm[: n * STEP]]
        codes, last = [], None
        for c in chunks:
            last, out = self._encode_steps(c)
            if out is not None:
                codes.append(out)
        if not codes:
            self.mx.eval(last, self.state_arrays())  # the first half's work, done now
            return None
        out = codes[0] if len(codes) == 1 else self.mx.concatenate(codes, axis=2)
        self.mx.eval(out, self.state_arrays())
        return np.array(out[0], dtype=np.uint32)

    # -- decode
    def decode(self, codes) -> np.ndarray:
        """Codes of one step ((1, K), (K,), (K, 1)) or (1, K, T) -> float32 (1920 * T,)."""
        mx, m = self.mx, self.mimi
        c = mx.array(codes_for_decode(codes, self.num_codebooks))
        h = m.quantizer.decode(c)
        if h.dtype != self.dtype:
            h = h.astype(self.dtype)
        h = m.upsample.step(h)
        h = transformer_step(m.decoder_transformer, h, self.dec_caches,
                             exact_gelu=self.exact_gelu)
        pcm = m.decoder.step(h)
        if pcm.dtype != mx.float32:
            pcm = pcm.astype(mx.float32)
        mx.eval(pcm, self.state_arrays())
        return np.array(pcm, dtype=np.float32).reshape(-1)

    def cache_nbytes(self) -> tuple[int, int]:
        return cache_nbytes(self.enc_caches), cache_nbytes(self.dec_caches)


def codes_for_decode(codes, k: int) -> np.ndarray:
    """uint32 (1, K, T) from one step's codes ((1, K) as LmGen gives them, (K,), (K, 1)) or
    (1, K, T).  ValueError otherwise (rustymimi's decoder thread dies on a wrong shape)."""
    arr = np.asarray(codes)
    if arr.ndim == 3:
        if arr.shape[:2] != (1, k) or arr.shape[2] == 0:
            raise ValueError(f"codes of shape {arr.shape}: expected (1, {k}, T)")
    elif arr.size == k:
        arr = arr.reshape(1, k, 1)
    else:
        raise ValueError(f"codes of shape {arr.shape}: expected (1, {k})")
    if arr.dtype.kind not in "ui":
        raise ValueError(f"codes of dtype {arr.dtype}: expected integers")
    return np.ascontiguousarray(arr, dtype=np.uint32)


# ----------------------------------------------------------------------------------- the codec


class _Shared:
    """What the caller's threads and the worker share.  The worker holds this, never the
    codec, so a codec dropped without close() is collected, and its finaliser stops the
    worker (the pipeline just drops a StreamTokenizer it is done with)."""

    def __init__(self):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.enc_out: collections.deque = collections.deque()
        self.dec_out: collections.deque = collections.deque()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.load_s = 0.0


def _shutdown(shared: _Shared) -> None:
    shared.stop.set()
    shared.jobs.put(None)


def _worker(shared: _Shared, mimi_path: str, num_codebooks: int, opts: dict) -> None:
    """The thread that owns every MLX object: loads the model, then runs the queued jobs."""
    try:
        import mlx.core as mx

        t0 = time.perf_counter()
        if opts["device"] is not None:
            mx.set_default_device(mx.gpu if opts["device"] == "gpu" else mx.cpu)
        dtype = opts["dtype"]
        if isinstance(dtype, str):
            dtype = getattr(mx, dtype)
        mimi = load_mimi(mimi_path, num_codebooks, context=opts["context"], dtype=dtype)
        streams = MimiStreams(mimi, cache=opts["cache"], exact_gelu=opts["exact_gelu"],
                              split_steps=opts["split_steps"], slack=opts["slack"])
        del mimi
        shared.load_s = time.perf_counter() - t0
    except BaseException as e:  # noqa: BLE001 (reported by the constructor)
        shared.error = e
        shared.ready.set()
        return
    shared.ready.set()
    try:
        while not shared.stop.is_set():
            job = shared.jobs.get()
            if job is None or shared.stop.is_set():
                break
            kind, arg = job
            if kind == "enc":
                codes = streams.encode(arg)
                if codes is not None:
                    shared.enc_out.append(codes)
            elif kind == "dec":
                shared.dec_out.append(streams.decode(arg))
            elif kind == "reset":
                streams.reset()
                shared.enc_out.clear()
                shared.dec_out.clear()
                arg.set()
            elif kind == "call":  # (fn, result list, event): fn(streams), here
                fn, box, ev = arg
                try:
                    box.append(fn(streams))
                except BaseException as e:  # noqa: BLE001 (re-raised by run_in_worker)
                    box.append(e)
                del fn
                ev.set()
            del job, arg
    except BaseException as e:  # noqa: BLE001 (raised by the next get_* or submit)
        shared.error = e
    finally:
        del streams  # the model goes; hand its memory back
        try:
            import gc

            gc.collect()
            clear = getattr(mx, "clear_cache", None) or mx.metal.clear_cache
            clear()
        except Exception:  # noqa: BLE001
            pass


class MlxMimiCodec:
    """rustymimi.StreamTokenizer's interface on MLX's Mimi: see the module docstring.

    mimi_path: the Mimi safetensors (PyTorch names, as rustymimi reads).
    num_codebooks: codebooks encoded and decoded (8 for Moshi).
    dtype: None (float32) or an mlx dtype / its name ("bfloat16") for the non-quantizer parts.
    device: None (MLX's default: the GPU when there is one), "cpu" or "gpu".
    cache: "bounded" (SlidingKVCache) or "unbounded" (moshi_mlx's KVCache, for comparisons).
    exact_gelu, split_steps: see the module docstring.
    context, slack: the attention window (Mimi's: 250) and SlidingKVCache's slack (tests).
    The constructor returns once the worker has loaded the model (raising its error if any).
    """

    def __init__(self, mimi_path: str | Path, *, num_codebooks: int = 8, dtype=None,
                 device: str | None = None, cache: str = "bounded", exact_gelu: bool = True,
                 split_steps: bool = True, context: int | None = None, slack: int = 64,
                 load_timeout_s: float = 300.0):
        from engine.model.lmcache import tune_mlx_env

        tune_mlx_env()  # MLX's CUDA kernels compiled once, kept beside the models
        self.mimi_path = str(mimi_path)
        self.num_codebooks = num_codebooks
        opts = dict(dtype=dtype, device=device, cache=cache, exact_gelu=exact_gelu,
                    split_steps=split_steps, context=context, slack=slack)
        self._shared = sh = _Shared()
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=_worker, name="mlx-mimi", daemon=True,
                                        args=(sh, self.mimi_path, num_codebooks, opts))
        self._finalizer = weakref.finalize(self, _shutdown, sh)
        self._thread.start()
        if not sh.ready.wait(load_timeout_s):
            self.close(timeout_s=0)
            raise TimeoutError(f"MLX Mimi did not load within {load_timeout_s:.0f} s")
        if sh.error is not None:
            err = sh.error
            self.close()
            raise RuntimeError(f"could not load MLX Mimi from {self.mimi_path}: {err}") from err

    @property
    def load_s(self) -> float:
        """Seconds the worker took to build and load the model."""
        return self._shared.load_s

    def _check(self) -> None:
        err = self._shared.error
        if err is not None:
            raise RuntimeError(f"the MLX Mimi worker failed: {err!r}") from err
        if self._closed:
            raise RuntimeError("the MLX Mimi codec is closed")

    # -- rustymimi.StreamTokenizer's interface
    def encode(self, pcm) -> None:
        """Queue float32 samples (1920, or 960 + 960) for encoding. Never blocks."""
        self._check()
        self._shared.jobs.put(("enc", np.array(pcm, dtype=np.float32, copy=True).reshape(-1)))

    def get_encoded(self):
        """The next code frames, uint32 (8, n) (n = 1 per frame), or None."""
        try:
            return self._shared.enc_out.popleft()
        except IndexError:
            self._check()
            return None

    def decode(self, codes) -> None:
        """Queue one step's codes, uint32 (1, 8) (LmGen.last_audio_tokens()). Never blocks."""
        self._check()
        self._shared.jobs.put(("dec", codes_for_decode(codes, self.num_codebooks).copy()))

    def get_decoded(self):
        """The next decoded PCM, float32 (1920,), or None."""
        try:
            return self._shared.dec_out.popleft()
        except IndexError:
            self._check()
            return None

    # -- extras
    def pending(self) -> int:
        """Jobs queued and not yet taken by the worker (approximate)."""
        return self._shared.jobs.qsize()

    def run_in_worker(self, fn, timeout_s: float = 60.0):
        """fn(MimiStreams) in the worker thread, after every job queued before; its result."""
        self._check()
        box: list = []
        ev = threading.Event()
        self._shared.jobs.put(("call", (fn, box, ev)))
        if not ev.wait(timeout_s):
            raise TimeoutError("the MLX Mimi worker did not answer")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def reset(self, timeout_s: float = 60.0) -> None:
        """Back to a fresh codec's state, after the jobs queued before; results not yet
        collected are discarded.  Blocks until done."""
        self._check()
        ev = threading.Event()
        self._shared.jobs.put(("reset", ev))
        if not ev.wait(timeout_s):
            self._check()
            raise TimeoutError("the MLX Mimi worker did not reset")

    def warm(self, frames: int = 4, timeout_s: float = 60.0, reset: bool = True) -> float:
        """Silent frames through encode (whole and in halves) and decode, through the worker
        as live frames go, then (`reset`) a fresh state.  Returns the time taken in ms."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        pcm = np.zeros(FRAME, np.float32)

        def wait(getter):
            while True:
                out = getter()
                if out is not None:
                    return out
                if time.monotonic() > deadline:
                    raise TimeoutError("the MLX Mimi codec did not answer during warmup")
                time.sleep(0.002)

        for i in range(frames):
            if i % 2:
                self.encode(pcm[: FRAME // 2])
                self.encode(pcm[FRAME // 2:])
            else:
                self.encode(pcm)
            codes = wait(self.get_encoded)
            self.decode(codes.reshape(1, -1)[:, : self.num_codebooks])
            wait(self.get_decoded)
        if reset:
            self.reset(max(1.0, deadline - time.monotonic()))
        return (time.perf_counter() - t0) * 1000.0

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker (jobs still queued are dropped; one under way finishes) and free the
        model.  Idempotent.  Dropping the codec without close() stops the worker too."""
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._finalizer()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
