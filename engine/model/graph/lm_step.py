"""The LM prepared for a conversation: KV caches allocated once, a step with one host sync.

moshi_mlx's `Lm` grows its LM caches by 256 positions at a time (a concatenate that copies
the whole cache) and frees them at `reset()`; its depformer's caches are reallocated at every
step; and `LmGen.step` + `last_audio_tokens()` ask the device for 21 host round trips per
step.  `prepare_lm(model, max_steps, mode)` returns a `PreparedLM` whose `step(codes)` gives
the same (text token, audio tokens) as `LmGen` and whose `reset()` starts a segment:

- ``stock`` (`StockLM`): LmGen and moshi_mlx's own caches.  What conditioned models (Hibiki)
  and settings the other modes do not support run.
- ``onesync`` (`OneSyncLM`): `StaticKVCache`s replace every LM and depformer cache, allocated
  to their full size before the first frame, written in place and kept across `reset()`;
  LmGen's token bookkeeping is done on the host and the step asks the device once, for the
  1 + dep_q sampled tokens.  Same tokens as LmGen for the same random seed.
- ``layered`` (`LayeredLM`): as onesync, with each LM layer's work before and after its
  attention compiled (the position is an array: one trace per layer for the whole
  conversation), the cache write and the attention (cuDNN's decoding attention on MLX's CUDA
  build) uncompiled between them, and everything after the layers (text sampling, the
  depformer, audio sampling: fixed shapes at every position) one compiled trace.  Same tokens
  as LmGen.

``auto`` (the default) picks layered on MLX's CUDA backend, onesync elsewhere.  Only what
moshi_mlx's public modules expose is used (their sub-modules are called directly; the cache
objects are replaced in the model's cache lists, which `restore()` puts back).
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from engine.model.graph import lm_layers
from engine.model.graph.host_tokens import HostTokens
from engine.model.graph.kv_cache import StaticKVCache

if TYPE_CHECKING:  # pragma: no cover
    from moshi_mlx.models import Lm

MODES = ("stock", "onesync", "layered")
DEFAULT_MODE = "auto"  # layered on MLX's CUDA backend, onesync elsewhere
CUDA_MODE = "layered"
KV_BLOCK = 256  # capacity rounded up to this: MLX's CUDA cuDNN decode path wants T_kv % 256 == 0
# layered: hand the GPU the layers built so far every this many layers (mx.async_eval), so that
# it runs them while Python builds the rest; 0: the whole step at once, when its tokens are read.
EVAL_EVERY_LAYERS = 4


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
    requested = mode or DEFAULT_MODE
    if requested == "auto":
        requested = auto_mode()
    if requested not in MODES:
        raise ValueError(f"unknown LM step mode {requested!r} (use one of {', '.join(MODES)})")
    cls = {"stock": StockLM, "onesync": OneSyncLM, "layered": LayeredLM}[requested]
    note = None
    if cls is not StockLM:
        why = _unsupported(model, int(max_steps))
        if why:
            note = f"LM step mode {requested!r} unsupported ({why}): using 'stock'"
            cls = StockLM
    lm = cls(model, max_steps, text_sampler, audio_sampler, condition)
    lm.requested_mode, lm.note = requested, note
    return lm


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


def lm_mode_from(requested: str | None = None) -> str:
    """The step mode: `requested`, else $MOSHI_TUI_LM_MODE, else DEFAULT_MODE."""
    import os

    mode = requested or os.environ.get("MOSHI_TUI_LM_MODE") or DEFAULT_MODE
    if mode not in MODES + ("auto",):
        from engine.errors import UsageError

        raise UsageError(
            f"unknown LM step mode {mode!r} (use auto or one of {', '.join(MODES)})")
    return mode


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


class PreparedLM:
    """One conversation's LM: `step(codes)` per 80 ms frame, `reset()` at segment starts."""

    mode = ""

    def __init__(self, model, max_steps: int, text_sampler=None, audio_sampler=None,
                 condition=None):
        from moshi_mlx import utils

        self.model = model
        self.max_steps = int(max_steps)
        self.requested_mode = self.mode
        self.note = None  # why the requested mode fell back to stock
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

    @property
    def step_idx(self) -> int:
        raise NotImplementedError

    def step(self, codes) -> tuple[int, np.ndarray | None]:
        """One frame: the user's audio codes (8, 1) in; (text token, (1, 8) uint32 | None)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Start a new segment."""
        raise NotImplementedError

    def warm(self, n: int = 6) -> float:
        """Run `n` real steps (and, with preallocated caches, one at a long context), then
        reset; return the time (ms)."""
        t0 = time.perf_counter()
        codes = np.zeros((self.n_other, 1), dtype=np.uint32)
        for _ in range(n):
            if self.step_idx >= self.max_steps - 1:  # (a tiny --max-steps: as a session does)
                self.reset()
            self.step(codes)
        self._warm_long_context()
        self.reset()
        return (time.perf_counter() - t0) * 1000.0

    def kv_arrays(self) -> list:
        """The LM's cache arrays (keys, values per layer), for checks."""
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

    def _warm_long_context(self) -> None:
        pass


class StockLM(PreparedLM):
    """LmGen on moshi_mlx's own caches."""

    mode = "stock"

    def __init__(self, *args):
        super().__init__(*args)
        for c in self.model.transformer_cache:
            c.reset()
        self._new_gen()

    @property
    def step_idx(self) -> int:
        return self._gen.step_idx

    def step(self, codes) -> tuple[int, np.ndarray | None]:
        import mlx.core as mx

        data = mx.array(codes).transpose(1, 0)[:, : self.n_other]
        text_token = self._gen.step(data, ct=self.condition)[0]
        text_token = int(text_token[0].item())
        audio = self._gen.last_audio_tokens()
        if audio is not None:
            audio = np.array(audio).astype(np.uint32)
        return text_token, audio

    def reset(self) -> None:
        """Start a new segment: empty the caches, a fresh LmGen."""
        for c in self.model.transformer_cache:
            c.reset()
        self._new_gen()

    def _new_gen(self) -> None:
        from engine.model.load import make_gen

        self._gen = make_gen(self.model, self.max_steps)
        self._gen.text_sampler = self.text_sampler
        self._gen.audio_sampler = self.audio_sampler


class OneSyncLM(PreparedLM):
    """StaticKVCaches, the token bookkeeping on the host, moshi_mlx's `Lm._sample` on device."""

    mode = "onesync"

    def __init__(self, *args):
        super().__init__(*args)
        self._install_static_caches()
        self._tokens = HostTokens(self.cfg, self.max_steps)

    @property
    def step_idx(self) -> int:
        return self._tokens.step_idx

    def step(self, codes) -> tuple[int, np.ndarray | None]:
        import mlx.core as mx

        arr = np.asarray(codes)
        other = arr.T[0, : self.n_other] if arr.ndim == 2 else arr[: self.n_other]
        vec = self._tokens.inputs(other)
        host = self._to_host(self._device_step(mx.array(vec)))
        self._tokens.record(int(host[0]), host[1:])
        return int(host[0]), self._tokens.last_audio()

    def reset(self) -> None:
        """Start a new segment: rewind the caches (kept allocated) and the token history."""
        for c in self.model.transformer_cache:
            c.reset()
        self._tokens.reset()

    def _device_step(self, ids):
        """Lm._sample on token ids (1 + n_q,): the 1 + dep_q sampled tokens, unevaluated."""
        import mlx.core as mx

        text_ids = ids[0:1].reshape(1, 1)
        audio_ids = [ids[1 + i : 2 + i].reshape(1, 1) for i in range(self.cfg.audio_codebooks)]
        text, audio, _ = self.model._sample(
            text_ids, audio_ids, self.text_sampler, self.audio_sampler
        )
        return mx.concatenate([text.reshape(-1), audio.reshape(-1)])

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

    def _warm_long_context(self) -> None:
        """A throwaway step with the caches at offset >= 256, so that a CUDA build prepares
        cuDNN's decoding graph (keyed by the preallocated length) before the first frame."""
        import mlx.core as mx

        off = min(self.capacity - 1, KV_BLOCK + 8)
        for c in self.model.transformer_cache:
            c.self_attn.offset = off
        ids = np.full(1 + self.cfg.audio_codebooks, self.cfg.audio_padding_token, np.int32)
        ids[0] = self.cfg.text_out_vocab_size
        self._to_host(self._device_step(mx.array(ids)))


class LayeredLM(OneSyncLM):
    """OneSyncLM's caches and bookkeeping; each LM layer's work around its attention compiled,
    and everything after the layers (`_tail`) one compiled trace (see the module docstring)."""

    mode = "layered"

    def __init__(self, *args):
        import mlx.core as mx

        super().__init__(*args)
        rs = mx.random.state
        self._tail_fn = partial(mx.compile, inputs=[rs], outputs=[rs])(self._tail)
        self._audio_table = lm_layers.joined_table(self.model.audio_embs)
        self._layer_fns = [(mx.compile(partial(lm_layers.qkv, layer)),
                            mx.compile(partial(lm_layers.after_attention, layer)))
                           for layer in self.model.transformer.layers]
        self._embed_fn = mx.compile(self._embed)  # (the 17 embeddings' sum: one kernel)

    def _device_step(self, ids):
        """The LM's layers on the preallocated caches, then the compiled `_tail`."""
        import mlx.core as mx

        m = self.model
        xs = self._embed_fn(ids)
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
        return self._tail_fn(m.out_norm(xs))

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
                h = lm_layers.dep_layer(layer, h, si, ks[li], vs[li])
            last, _ = self.audio_sampler(sl.linear_out(h))
            tokens.append(last.reshape(-1))
        return mx.concatenate(tokens)
