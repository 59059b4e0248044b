"""The LM prepared for a conversation: KV caches allocated once, a step with one host sync.

moshi_mlx 0.3.0 (pinned) builds `Lm.transformer_cache` from `RotatingKVCache(max_size=4096,
step=256)`: the keys/values grow by 256 positions (a concatenate that copies the whole cache)
at steps 256, 512, ..., and `reset()` frees them, so every segment grows them again. The
depformer's caches (`KVCache`, step 256) are freed and reallocated at *every* step (its
`sample()` resets them). And `LmGen.step` + `last_audio_tokens()` + the server's conversions
ask the device for 21 host round trips per step (16 + 1 `if (...).any()` checks in `_step`,
2 in `last_audio_tokens`, `.item()`, `np.array`).

`prepare_lm(model, max_steps, mode)` returns a `PreparedLM` whose `step(codes)` gives the same
(text token, audio tokens) as `LmGen` and whose `reset()` starts a segment. Modes, each one
change on top of the previous, so a bench can show what each buys:

- ``stock``: LmGen and moshi_mlx's caches, exactly what the server did before.
- ``prealloc``: `StaticKVCache`s replace every LM and depformer cache: allocated to their
  full size before the first frame, written in place (the buffer is donated, never copied),
  kept across `reset()`. LmGen runs unchanged on them (same kernels, same results, bit for
  bit). `warm()` also runs one step at a long context so that a CUDA build prepares its
  cuDNN decoding graph (keyed by the preallocated length, one for the whole conversation)
  before the first frame instead of at step 255.
- ``onesync``: as prealloc, but the token bookkeeping of `LmGen` (its `gen_sequence` and
  delays) is done on the host in numpy and the step asks the device once, for the 1 + dep_q
  sampled tokens. Same tokens as LmGen for the same random seed.
- ``fixed``: fixed-shape attention: the LM attends over the whole preallocated cache with a
  mask (positions > step masked), the position is an array (RoPE offset, cache write index),
  and the depformer keeps its 8 positions in the step's own graph. Every step has identical
  shapes. The results equal the stock path's up to float rounding (the softmax sums over the
  masked tail too), not bit for bit.
- ``compiled``: the fixed step (embeddings, LM, text sampling, depformer, audio sampling) under
  `mx.compile`, with the caches and the random state as its state: elementwise ops fused,
  one trace for the whole conversation.
- ``hybrid``: the LM's layers as in onesync (preallocated caches read up to the current
  position, so MLX's CUDA build keeps cuDNN's decoding attention, which the fixed mask turns
  off), and everything after them (text sampling, the depformer, audio sampling: fixed shapes
  whatever the position) under `mx.compile`, with the random state as its state.
- ``layered``: as hybrid, and each LM layer's work before and after its attention compiled
  too (the position is an array: one trace per layer for the whole conversation); only the
  cache write and cuDNN's attention run uncompiled between them.

``auto`` (the default) picks layered on MLX's CUDA backend, onesync elsewhere. Measured on an
NVIDIA H200 (mlx 0.32.4 CUDA, Moshi v0.1 q4, random weights; scripts/gpu_step_probe.py, 300
steps back to back / on an 80 ms clock as in a conversation): layered p50 11.4 / 18.4 ms,
hybrid 16.0 / 16.6, compiled 19.5 / 20.0, onesync 30.6 (back to back); the stock step p50
32 ms with steps 255/256/512 at 1078/949/710 ms (81 ms after a reset).

Only what moshi_mlx's public modules expose is used (their sub-modules are called directly;
the cache objects are replaced in the model's cache lists, which `restore()` puts back).
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from moshi_mlx.models import Lm

MODES = ("stock", "prealloc", "onesync", "fixed", "compiled", "hybrid", "layered")
# "auto": layered on MLX's CUDA backend (measured on an H200, q4 7B: the fastest step, see
# above), onesync elsewhere (bit-identical to stock; CPU and Metal unmeasured with compile).
DEFAULT_MODE = "auto"
CUDA_MODE = "layered"
KV_BLOCK = 256  # capacity rounded up to this: MLX's CUDA cuDNN decode path wants T_kv % 256 == 0
UNGENERATED = -2  # LmGen.ungenerated_token
# The modes whose LM layers run moshi_mlx's own attention on StaticKVCaches.
STATIC_CACHE_MODES = ("prealloc", "onesync", "hybrid", "layered")
# The modes whose step after the LM's layers is the compiled `_tail`.
TAIL_MODES = ("hybrid", "layered")
# layered: hand the GPU the layers built so far every this many layers (mx.async_eval), so that
# it runs them while Python builds the rest; 0: the whole step at once, when its tokens are read.
# Measured on an H200 (q4 7B, steps on an 80 ms clock, scripts/gpu_step_probe.py): a step is
# ~3 ms of Python building its graph, ~9 ms of MLX launching it and < 1 ms more of GPU; every
# 4 layers, p50 16.1 -> 11.1 ms.
EVAL_EVERY_LAYERS = 4
# Fewer operations per step for MLX to evaluate on the host (the step is host-bound on a GPU):
# the codebooks' embeddings as one joined table, a one-position layer's queries, keys and
# values by a reshape instead of transposes, the depformer's keys and values joined together,
# the gating's halves by one split.  Same values (tested); False: the graph as moshi_mlx builds
# it (for comparisons: scripts/gpu_step_probe.py `PROBE_LEAN=0`).
LEAN_GRAPH = True
# MLX's CUDA backend records this many operations into one CUDA graph before it launches it
# (its default: 20); fewer, larger graphs cost the host less per step (H200, same probe: step
# p50 16.1 -> 13.4 ms, max 29.0 -> 21.7 ms; 250: no better).  Set unless the user set it.
CUDA_OPS_PER_GRAPH = 100

# Host round trips per step (after the first max_delay steps), counted in the source:
# moshi_mlx 0.3.0 LmGen._step: 16 `if (audio_token == -2).any()` + 1 text check; its
# last_audio_tokens(): 2 `.any()` checks; the server's Stepper: `.item()` + `np.array(audio)`.
HOST_SYNCS_PER_STEP = {"stock": 21, "prealloc": 21, "onesync": 1, "fixed": 1, "compiled": 1,
                       "hybrid": 1, "layered": 1}


class CacheFullError(RuntimeError):
    pass


class StaticKVCache:
    """A drop-in for moshi_mlx's KVCache/RotatingKVCache with a fixed capacity.

    `keys`/`values` are (B, heads, capacity, head_dim) arrays allocated here, before any
    step; `update_and_fetch` writes the new positions in place (MLX donates the buffer to
    the slice update, so the array's memory stays the same) and returns views
    `[..., :offset, :]`, exactly what moshi_mlx's caches return. `reset()` only rewinds:
    positions past `offset` are never read, so they need no clearing.
    """

    def __init__(self, n_kv_heads: int, head_dim: int, capacity: int, dtype, batch: int = 1):
        import mlx.core as mx

        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.capacity = capacity
        self.max_size = capacity  # name used by moshi_mlx's create_attention_mask
        shape = (batch, n_kv_heads, capacity, head_dim)
        self.keys = mx.zeros(shape, dtype)
        self.values = mx.zeros(shape, dtype)
        mx.eval(self.keys, self.values)
        self.offset = 0

    def update_and_fetch(self, keys, values):
        prev = self.offset
        end = prev + keys.shape[2]
        if end > self.capacity:
            raise CacheFullError(
                f"KV cache full ({self.capacity} positions): start a new segment (reset)"
            )
        if keys.dtype != self.keys.dtype:
            raise TypeError(f"KV cache holds {self.keys.dtype}, the layer wrote {keys.dtype}")
        self.keys[..., prev:end, :] = keys
        self.values[..., prev:end, :] = values
        self.offset = end
        return self.keys[..., :end, :], self.values[..., :end, :]

    def reset(self) -> None:
        self.offset = 0

    @property
    def state(self):
        return self.keys, self.values


def data_address(arr) -> int:
    """Address of an evaluated array's buffer (CPU/unified memory), to check reuse in tests."""
    import mlx.core as mx

    mx.eval(arr)
    view = arr.view(mx.uint16) if arr.dtype == mx.bfloat16 else arr
    return int(np.array(view, copy=False).__array_interface__["data"][0])


def prepare_lm(
    model: "Lm",
    max_steps: int,
    mode: str | None = None,
    *,
    text_sampler=None,
    audio_sampler=None,
    condition=None,
) -> "PreparedLM":
    """Prepare `model` for conversations of segments of at most `max_steps` steps
    (`condition`: the ConditionTensor a conditioned model, Hibiki, runs with)."""
    mode = mode or DEFAULT_MODE
    if mode == "auto":
        mode = auto_mode()
    if mode not in MODES:
        raise ValueError(f"unknown LM step mode {mode!r} (use one of {', '.join(MODES)})")
    return PreparedLM(model, max_steps, mode, text_sampler, audio_sampler, condition)


def auto_mode() -> str:
    """The mode "auto" stands for on this machine: layered on CUDA, else onesync."""
    import mlx.core as mx

    if mx.default_device() == mx.gpu and _is_cuda():
        return CUDA_MODE
    return "onesync"


def _is_cuda() -> bool:
    import mlx.core as mx

    cuda = getattr(mx, "cuda", None)
    if cuda is not None and hasattr(cuda, "is_available"):
        return bool(cuda.is_available())
    metal = getattr(mx, "metal", None)
    return not (metal is not None and metal.is_available())


def tune_mlx_env(environ=None) -> dict:
    """MLX settings for this process and those it starts, before MLX runs anything (it reads
    them once): its CUDA kernel cache kept (persist_jit_cache) and, on Linux (where a GPU is
    MLX's CUDA backend: the setting is CUDA's alone there), CUDA_OPS_PER_GRAPH operations per
    CUDA graph.  What the user set is left alone.  Returns what was set."""
    import os
    import sys

    env = os.environ if environ is None else environ
    done = {}
    path = persist_jit_cache(env)
    if path:
        done["MLX_PTX_CACHE_DIR"] = path
    if sys.platform.startswith("linux") and not env.get("MLX_MAX_OPS_PER_BUFFER"):
        env["MLX_MAX_OPS_PER_BUFFER"] = done["MLX_MAX_OPS_PER_BUFFER"] = str(CUDA_OPS_PER_GRAPH)
    return done


def persist_jit_cache(environ=None) -> str | None:
    """Keep MLX's CUDA kernel cache out of /tmp: set MLX_PTX_CACHE_DIR (unless set) to
    <moshi-tui cache>/mlx-ptx/<mlx version>. MLX's CUDA backend compiles kernels with NVRTC
    on first use and stores the PTX in /tmp/mlx/<version>/ptx by default; on an H200 a cold
    cache cost 59 s (the stock step's kernels) and 46 s more (the compiled step's fused
    kernels) of warm-up, a warm cache 1.2 s. Returns the directory, or None if left alone."""
    import os
    from importlib import metadata

    env = os.environ if environ is None else environ
    if env.get("MLX_PTX_CACHE_DIR"):
        return None
    try:
        version = metadata.version("mlx")
    except metadata.PackageNotFoundError:
        version = "unknown"
    from engine.model.demo import default_cache_dir

    path = str(default_cache_dir().parent / "mlx-ptx" / version)
    env["MLX_PTX_CACHE_DIR"] = path
    return path


def _unsupported(model, max_steps: int) -> str | None:
    cfg = model.cfg
    if cfg.transformer.cross_attention:
        return "cross-attention"
    if model.condition_provider is not None:
        return "conditioners"
    if cfg.depformer.num_slices == 0 or not model.depformer.slices:
        return "no depformer"
    if cfg.transformer.kv_repeat != 1 or cfg.depformer.transformer.kv_repeat != 1:
        return "kv_repeat != 1"
    if max_steps - 1 > cfg.transformer.context:
        # The stock attention then keeps a sliding window (and its rotating cache wraps at
        # 4096): not what a fixed buffer of max_steps positions does.
        return f"max_steps {max_steps} exceeds the LM context {cfg.transformer.context} + 1"
    return None


class _HostTokens:
    """LmGen's `gen_sequence` and delay arithmetic, on the host (numpy), index for index."""

    def __init__(self, cfg, max_steps: int):
        self.delays = list(cfg.audio_delays)
        self.n_q = cfg.audio_codebooks
        self.dep_q = cfg.depformer.num_slices
        self.max_delay = max(self.delays)
        self.text_start = cfg.text_out_vocab_size
        self.pad = cfg.audio_padding_token
        self.max_steps = max_steps
        self.seq = np.full((1 + self.n_q, max_steps), UNGENERATED, np.int32)
        self.step_idx = 0

    def reset(self) -> None:
        self.seq.fill(UNGENERATED)
        self.step_idx = 0

    def inputs(self, other_audio) -> np.ndarray:
        """The (1 + n_q,) token ids step `step_idx` feeds the LM (text, then each codebook)."""
        t = self.step_idx
        if t >= self.max_steps:
            raise ValueError(f"reached max-steps {self.max_steps}")
        self.seq[1 + self.dep_q :, t] = other_audio
        vec = np.empty(1 + self.n_q, np.int32)
        vec[0] = self.text_start if t == 0 else self.seq[0, t - 1]
        for cb, delay in enumerate(self.delays):
            g = t - 1 - delay
            vec[1 + cb] = self.seq[1 + cb, g] if g >= 0 else self.pad
        if (vec == UNGENERATED).any():
            raise ValueError(f"ungenerated value in the input tokens at step {t}")
        return vec

    def record(self, text: int, audio: np.ndarray) -> None:
        t = self.step_idx
        self.seq[0, t] = text
        for cb in range(self.dep_q):
            g = t - self.delays[cb]
            if g >= 0:
                self.seq[1 + cb, g] = audio[cb]
        self.step_idx = t + 1

    def last_audio(self) -> np.ndarray | None:
        g = self.step_idx - 1 - self.max_delay
        if g < 0:
            return None
        tokens = self.seq[1 : 1 + self.dep_q, g]
        if (tokens == self.pad).any():
            return None
        if (tokens == UNGENERATED).any():
            raise ValueError(f"ungenerated value in last-audio tokens {self.step_idx}")
        return tokens.astype(np.uint32).reshape(1, -1)


class PreparedLM:
    """One conversation's LM: `step(codes)` per 80 ms frame, `reset()` at segment starts."""

    def __init__(self, model, max_steps: int, mode: str, text_sampler=None, audio_sampler=None,
                 condition=None):
        import mlx.core as mx
        from moshi_mlx import utils

        self.model = model
        self.max_steps = int(max_steps)
        self.requested_mode = mode
        self.note = None
        if mode != "stock":
            why = _unsupported(model, self.max_steps)
            if why:
                self.note = f"LM step mode {mode!r} unsupported ({why}): using 'stock'"
                mode = "stock"
        self.mode = mode
        self.condition = condition  # (models with conditioners step in "stock" mode)
        self.text_sampler = text_sampler or utils.Sampler()
        self.audio_sampler = audio_sampler or utils.Sampler()
        self.host_syncs = 0  # device->host transfers asked for by this object's own code
        cfg = model.cfg
        self.cfg = cfg
        self.n_other = cfg.audio_codebooks - cfg.depformer.num_slices
        self.capacity = -(-self.max_steps // KV_BLOCK) * KV_BLOCK
        self._dtype = model.out_norm.weight.dtype
        self._stock_caches = (list(model.transformer_cache), list(model.depformer_cache))
        self._gen = None
        self._tokens = None
        self._state: list = []
        self._fn = None

        if mode in STATIC_CACHE_MODES:
            self._install_static_caches()
        if mode == "stock":
            for c in model.transformer_cache:
                c.reset()
        if mode in ("stock", "prealloc"):
            self._new_gen()
        else:
            self._tokens = _HostTokens(cfg, self.max_steps)
        if mode in ("fixed", "compiled"):
            t = cfg.transformer
            shape = (1, t.num_heads, self.capacity, t.head_dim)
            for _ in model.transformer.layers:
                self._state += [mx.zeros(shape, self._dtype), mx.zeros(shape, self._dtype)]
            mx.eval(self._state)
            self._positions = mx.arange(self.capacity)
            if mode == "compiled":
                rs = mx.random.state
                self._fn = partial(mx.compile, inputs=[self._state, rs],
                                   outputs=[self._state, rs])(self._fixed_forward)
            else:
                self._fn = self._fixed_forward
        if mode in TAIL_MODES:
            rs = mx.random.state
            self._fn = partial(mx.compile, inputs=[rs], outputs=[rs])(self._tail)
        self._audio_table = None
        if LEAN_GRAPH and mode not in ("stock", "prealloc", "onesync"):
            self._audio_table = _joined_table(model.audio_embs)
        self._layer_fns = []
        if mode == "layered":
            self._layer_fns = [(mx.compile(partial(_qkv, layer)),
                                mx.compile(partial(_after_attention, layer)))
                               for layer in model.transformer.layers]
            self._embed = mx.compile(self._embed)  # (the 17 embeddings' sum: one kernel)

    # ---------------------------------------------------------------- public

    @property
    def step_idx(self) -> int:
        return self._gen.step_idx if self._gen is not None else self._tokens.step_idx

    def step(self, codes) -> tuple[int, np.ndarray | None]:
        """One frame: the user's audio codes (8, 1) in; (text token, (1, 8) uint32 | None)."""
        import mlx.core as mx

        if self._gen is not None:  # stock, prealloc: LmGen as the server always ran it
            data = mx.array(codes).transpose(1, 0)[:, : self.n_other]
            text_token = self._gen.step(data, ct=self.condition)[0]
            text_token = int(text_token[0].item())
            audio = self._gen.last_audio_tokens()
            if audio is not None:
                audio = np.array(audio).astype(np.uint32)
            return text_token, audio

        arr = np.asarray(codes)
        other = arr.T[0, : self.n_other] if arr.ndim == 2 else arr[: self.n_other]
        vec = self._tokens.inputs(other)
        if self.mode == "onesync":
            out = self._sample_step(mx.array(vec))
        elif self.mode in TAIL_MODES:
            out = self._hybrid_step(mx.array(vec))
        else:
            pos = mx.array([self._tokens.step_idx], dtype=mx.int32)
            out = self._fn(mx.array(vec), pos)
        host = self._to_host(out)
        self._tokens.record(int(host[0]), host[1:])
        return int(host[0]), self._tokens.last_audio()

    def reset(self) -> None:
        """Start a new segment: rewind the caches (kept allocated) and the token history."""
        if self.mode == "stock":
            for c in self.model.transformer_cache:
                c.reset()
            self._new_gen()
            return
        if self.mode in STATIC_CACHE_MODES:
            for c in self.model.transformer_cache:
                c.reset()
        if self._gen is not None:
            self._new_gen()
        else:
            self._tokens.reset()

    def warm(self, n: int = 6) -> float:
        """Run `n` real steps, and one at a long context, then reset; return the time (ms)."""
        t0 = time.perf_counter()
        codes = np.zeros((self.n_other, 1), dtype=np.uint32)
        for _ in range(n):
            if self.step_idx >= self.max_steps - 1:  # (a tiny --max-steps: as a session does)
                self.reset()
            self.step(codes)
        if self.mode in STATIC_CACHE_MODES:
            self._long_context_step()
        self.reset()
        return (time.perf_counter() - t0) * 1000.0

    def lazy_step(self):
        """The model-side graph of one step from the current state, unevaluated (for counting
        its operations; it advances the caches, so `reset()` after)."""
        import mlx.core as mx

        ids = np.full(1 + self.cfg.audio_codebooks, self.cfg.audio_padding_token, np.int32)
        ids[0] = self.cfg.text_out_vocab_size
        if self.mode in ("fixed", "compiled"):
            return self._fn(mx.array(ids), mx.array([self.step_idx], dtype=mx.int32))
        if self.mode in TAIL_MODES:
            return self._hybrid_step(mx.array(ids))
        return self._sample_step(mx.array(ids))

    def kv_arrays(self) -> list:
        """The LM's cache arrays (keys, values per layer), for checks."""
        if self.mode in ("fixed", "compiled"):
            return list(self._state)
        out = []
        for c in self.model.transformer_cache:
            if c.self_attn.keys is not None:
                out += [c.self_attn.keys, c.self_attn.values]
        return out

    def restore(self) -> None:
        """Give the model back its moshi_mlx caches (emptied)."""
        lm, dep = self._stock_caches
        self.model.transformer_cache[:] = lm
        self.model.depformer_cache[:] = dep
        for c in lm:
            c.reset()

    # ---------------------------------------------------------------- internals

    def _new_gen(self) -> None:
        from engine.model.load import make_gen

        self._gen = make_gen(self.model, self.max_steps)
        self._gen.text_sampler = self.text_sampler
        self._gen.audio_sampler = self.audio_sampler

    def _install_static_caches(self) -> None:
        from moshi_mlx.modules.transformer import LayerCache

        m, cfg = self.model, self.cfg
        t, d = cfg.transformer, cfg.depformer.transformer
        m.transformer_cache[:] = [
            LayerCache(StaticKVCache(t.num_heads, t.head_dim, self.capacity, self._dtype))
            for _ in m.transformer.layers
        ]
        m.depformer_cache[:] = [
            LayerCache(StaticKVCache(d.num_heads, d.head_dim, cfg.depformer.num_slices,
                                     self._dtype))
            for _ in m.depformer.slices[0].transformer.layers
        ]

    def _to_host(self, out) -> np.ndarray:
        self.host_syncs += 1
        return np.array(out)

    def _sample_step(self, ids):
        """Lm._sample on token ids (1 + n_q,): the 1 + dep_q sampled tokens, unevaluated."""
        import mlx.core as mx

        text_ids = ids[0:1].reshape(1, 1)
        audio_ids = [ids[1 + i : 2 + i].reshape(1, 1) for i in range(self.cfg.audio_codebooks)]
        text, audio, _ = self.model._sample(
            text_ids, audio_ids, self.text_sampler, self.audio_sampler
        )
        return mx.concatenate([text.reshape(-1), audio.reshape(-1)])

    def _long_context_step(self) -> None:
        """A throwaway step with the caches at offset >= 256 (CUDA: cuDNN's decode graph)."""
        import mlx.core as mx

        off = min(self.capacity - 1, KV_BLOCK + 8)
        for c in self.model.transformer_cache:
            c.self_attn.offset = off
        ids = np.full(1 + self.cfg.audio_codebooks, self.cfg.audio_padding_token, np.int32)
        ids[0] = self.cfg.text_out_vocab_size
        step = self._hybrid_step if self.mode in TAIL_MODES else self._sample_step
        self._to_host(step(mx.array(ids)))

    def _embed(self, ids):
        """The LM's input for token ids (1 + n_q,): the text and codebook embeddings summed."""
        m = self.model
        xs = m.text_emb(ids[0:1].reshape(1, 1))
        if self._audio_table is not None:  # one lookup for every codebook, then the same sum
            table, offsets = self._audio_table
            rows = table(ids[1:] + offsets)
            for i in range(len(m.audio_embs)):
                xs = xs + rows[i]
            return xs
        for i, emb in enumerate(m.audio_embs):
            xs = xs + emb(ids[1 + i : 2 + i].reshape(1, 1)).transpose(1, 0, 2)
        return xs

    def _hybrid_step(self, ids):
        """The LM's layers on the preallocated caches, then the compiled `_tail`."""
        m = self.model
        if not self._layer_fns:  # hybrid: moshi_mlx's layers as they are
            out = m.transformer(self._embed(ids), cache=m.transformer_cache)
            return self._fn(m.out_norm(out))
        import mlx.core as mx

        xs = self._embed(ids)
        caches = [c.self_attn for c in m.transformer_cache]
        pos = mx.array([caches[0].offset], dtype=mx.int32)
        every = EVAL_EVERY_LAYERS
        for i, (layer, cache, (before, after)) in enumerate(
                zip(m.transformer.layers, caches, self._layer_fns)):
            q, k, v = before(xs, pos)
            k, v = cache.update_and_fetch(k, v)
            o = mx.fast.scaled_dot_product_attention(q, k, v, scale=layer.self_attn.scale)
            xs = after(xs, o)
            if every and (i + 1) % every == 0:  # the GPU starts on these layers meanwhile
                mx.async_eval(xs)
        return self._fn(m.out_norm(xs))

    def _fixed_forward(self, ids, pos):
        """The whole step with fixed shapes: (1 + n_q,) ids, (1,) position -> 1 + dep_q tokens."""
        m = self.model
        xs = self._embed(ids)
        mask = self._positions <= pos
        for li, layer in enumerate(m.transformer.layers):
            xs = self._lm_layer(layer, xs, li, pos, mask)
        return self._tail(m.out_norm(xs))

    def _tail(self, out):
        """After the LM's layers (`out`, normed): the text token, then the depformer's dep_q audio
        tokens, each fed the previous one -> (1 + dep_q,) tokens.  Same shapes at every step."""
        import mlx.core as mx

        m = self.model
        text_token, _ = self.text_sampler(m.text_linear(out))
        tokens = [text_token.reshape(-1)]
        last = text_token
        dep_layers = len(m.depformer.slices[0].transformer.layers)
        ks: list[list] = [[] for _ in range(dep_layers)]
        vs: list[list] = [[] for _ in range(dep_layers)]
        for si, sl in enumerate(m.depformer.slices):
            h = sl.linear_in(out) + sl.emb(last)
            for li, layer in enumerate(sl.transformer.layers):
                h = self._dep_layer(layer, h, si, ks[li], vs[li])
            last, _ = self.audio_sampler(sl.linear_out(h))
            tokens.append(last.reshape(-1))
        return mx.concatenate(tokens)

    def _lm_layer(self, layer, xs, li: int, pos, mask):
        import mlx.core as mx

        attn = layer.self_attn
        q, k, v = _qkv(layer, xs, pos)
        kc = mx.slice_update(self._state[2 * li], k, pos, axes=(2,))
        vc = mx.slice_update(self._state[2 * li + 1], v, pos, axes=(2,))
        self._state[2 * li] = kc
        self._state[2 * li + 1] = vc
        o = mx.fast.scaled_dot_product_attention(q, kc, vc, scale=attn.scale, mask=mask)
        return _after_attention(layer, xs, o)

    @staticmethod
    def _dep_layer(layer, xs, si: int, ks: list, vs: list):
        """A depformer layer at slice `si`; `ks`/`vs` hold the previous slices' keys/values."""
        import mlx.core as mx

        attn = layer.self_attn
        t = xs.shape[1]
        if LEAN_GRAPH and t == 1 and attn.rope is None:  # keys and values joined together
            qkv = _qkv_heads_first(layer, xs)
            q = qkv[:, 0]
            ks.append(qkv[:, 1:])
            kv = ks[0] if si == 0 else mx.concatenate(ks, axis=3)
            kv = _in_context(kv, 3, t, attn.cfg.context)
            kk, vv = kv[:, 0], kv[:, 1]
        else:
            q, k, v = _qkv(layer, xs, si)
            ks.append(k)
            vs.append(v)
            kk = ks[0] if si == 0 else mx.concatenate(ks, axis=2)
            vv = vs[0] if si == 0 else mx.concatenate(vs, axis=2)
            kk = _in_context(kk, 2, t, attn.cfg.context)
            vv = _in_context(vv, 2, t, attn.cfg.context)
        o = mx.fast.scaled_dot_product_attention(q, kk, vv, scale=attn.scale)
        return _after_attention(layer, xs, o)


def _in_context(x, axis: int, t: int, context: int):
    """Keys or values `x` cut to the last `t + context` positions along `axis` (the `t` new
    ones and the attention's context before them)."""
    k_len = x.shape[axis]
    target = t + min(context, k_len - t)
    if target >= k_len:
        return x
    return x[(slice(None),) * axis + (slice(k_len - target, None),)]


def _joined_table(embs):
    """The codebooks' embeddings as one table (their rows one after the other) and each
    codebook's first row, so that one lookup embeds every codebook's token: (module, offsets),
    or None when the tables differ in kind or shape.  A lookup in each of 16 tables costs
    ~60 operations per step for MLX to launch (a quantized table's lookup is a few gathers and
    a dequantization), the joined one a handful; the memory is the tables' once more (q4 Moshi:
    ~75 MB)."""
    import copy

    import mlx.core as mx

    first = embs[0]
    keys = [k for k in ("weight", "scales", "biases") if k in first]
    if "weight" not in keys or not all(
            type(e) is type(first) and all(k in e and e[k].shape == first[k].shape for k in keys)
            and getattr(e, "group_size", None) == getattr(first, "group_size", None)
            and getattr(e, "bits", None) == getattr(first, "bits", None) for e in embs):
        return None
    joined = copy.copy(first)
    for k in keys:
        setattr(joined, k, mx.concatenate([e[k] for e in embs], axis=0))
    rows = first["weight"].shape[0]
    offsets = mx.arange(len(embs), dtype=mx.int32) * rows
    mx.eval([joined[k] for k in keys], offsets)
    return joined, offsets


def _after_attention(layer, xs, o):
    """The rest of a transformer layer after its attention `o` (heads first): the output
    projection, the residual, the feed-forward and its residual."""
    b, t, hd = xs.shape
    # (one position: heads-first and positions-first are the same memory, a reshape suffices)
    if LEAN_GRAPH and t == 1:
        o = o.reshape(b, t, hd)
    else:
        o = o.transpose(0, 2, 1, 3).reshape(b, t, hd)
    o = layer.self_attn.out_proj(o)
    xs = xs + layer.layer_scale_1(o)
    return xs + layer.layer_scale_2(_feed_forward(layer.gating, layer.norm2(xs)))


def _feed_forward(gating, xs):
    """moshi_mlx's MlpGating with one split where it takes two strided halves (fewer views for
    MLX to evaluate, the same values); any other feed-forward as it is."""
    import mlx.core as mx
    import mlx.nn as nn

    if not LEAN_GRAPH or type(gating).__name__ != "MlpGating":
        return gating(xs)
    a, g = mx.split(gating.linear_in(xs), 2, axis=-1)
    return gating.linear_out(nn.silu(a) * g)


def _qkv(layer, xs, offset):
    """A transformer layer's queries, keys and values for `xs` (heads first), rotated to the
    position `offset` when the layer uses RoPE."""
    attn = layer.self_attn
    b, t, _ = xs.shape
    if LEAN_GRAPH and t == 1:
        qkv = _qkv_heads_first(layer, xs)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    else:
        qkv = attn.in_proj(layer.norm1(xs)).reshape(b, t, 3, attn.cfg.num_heads,
                                                    attn.cfg.head_dim)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    if attn.rope is not None:
        q = attn.rope(q, offset=offset)
        k = attn.rope(k, offset=offset)
    return q, k, v


def _qkv_heads_first(layer, xs):
    """For one position (`xs` (b, 1, dim)): the queries, keys and values as one (b, 3, heads,
    1, head_dim) array.  With one position, the projection's (b, 1, 3, heads, head_dim) is that
    array's memory already: a reshape, where the general case needs a transpose per tensor
    (every view is a node MLX evaluates on the host, and the step is host-bound on a GPU)."""
    attn = layer.self_attn
    b = xs.shape[0]
    return attn.in_proj(layer.norm1(xs)).reshape(b, 3, attn.cfg.num_heads, 1,
                                                 attn.cfg.head_dim)


def lm_mode_from(options: dict | None = None) -> str:
    """The step mode: options["lm_mode"], else $MOSHI_TUI_LM_MODE, else DEFAULT_MODE."""
    import os

    mode = (options or {}).get("lm_mode") or os.environ.get("MOSHI_TUI_LM_MODE") or DEFAULT_MODE
    if mode not in MODES + ("auto",):
        from engine.errors import UsageError

        raise UsageError(
            f"unknown LM step mode {mode!r} (use auto or one of {', '.join(MODES)})")
    return mode


__all__: Sequence[str] = (
    "MODES", "DEFAULT_MODE", "StaticKVCache", "PreparedLM", "prepare_lm", "data_address",
    "CacheFullError", "HOST_SYNCS_PER_STEP", "lm_mode_from", "auto_mode", "persist_jit_cache",
    "tune_mlx_env",
)
