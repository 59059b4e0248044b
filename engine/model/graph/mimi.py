"""Mimi's streaming encoder and decoder on moshi_mlx's modules, run as rustymimi runs them.

- The encoder runs in 40 ms steps (one 25 Hz step of its transformer); a 1920-sample frame is
  two such steps, run exactly as its two halves would be, so early encode (960 + 960) gives
  the codes of whole frames bit for bit, by construction.  (`split_steps=False` runs a whole
  frame as one two-step call instead: fewer kernel launches, same maths, not bit-identical.)
- Attention: every query sees itself and the `context` (250) positions before it, never a
  later one, as rustymimi does (moshi-core's `get_mask`; candle trims the keys to the last
  t + context, then masks).  Stock moshi_mlx trims the keys the same way but passes no mask:
  in a call with t = 2 new positions both queries see the same keys, so the first attends to
  the second (the future) and the second to one position more than the context.
  `transformer_step` adds the mask; with t = 1 there is nothing to mask and stock and this
  agree bit for bit (tested).
- The MLP uses the exact (erf) GELU as rustymimi does (candle's gelu_erf); moshi_mlx uses
  `nn.gelu_approx` (`exact_gelu=False` restores it).
- Bounded memory: the transformers' caches are `SlidingKVCache`s
  (engine.model.graph.kv_cache), bit-identical to moshi_mlx's growing KVCache; the SEANet
  streaming states (conv and transposed-conv overlaps, streaming adds) are bounded by the
  kernel sizes (tested).
- dtype: float32 by default (what rustymimi runs).  bfloat16 casts all but the quantizer (the
  argmin over codebook distances stays float32), and its codes drift from rustymimi's.

Not thread-safe: engine.pipeline.codec_mlx runs one `MimiStreams` in the thread that loaded it.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np

from engine.audio import FRAME
from engine.model.graph.kv_cache import cache_nbytes, make_caches

ENCODER_STEP = FRAME // 2  # one 25 Hz step of Mimi's encoder transformer (40 ms)


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
        n = pcm.size // ENCODER_STEP
        self._residue = pcm[n * ENCODER_STEP:].copy()
        if n == 0:
            return None
        chunks = [pcm[i * ENCODER_STEP:(i + 1) * ENCODER_STEP] for i in range(n)] \
            if self.split_steps else [pcm[: n * ENCODER_STEP]]
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
