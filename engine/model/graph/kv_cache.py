"""KV caches for moshi_mlx's attention: the LM's fixed-capacity `StaticKVCache` and Mimi's
`SlidingKVCache`, which holds only what attention can still read."""

from __future__ import annotations


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


class SlidingKVCache:
    """A transformer layer's keys/values, holding only what attention can still read.

    `update_and_fetch(k, v)` (shapes (B, H, t, D)) returns the last min(offset, window + t)
    positions in time order: the ones the stock moshi_mlx attention keeps after its trim to
    t + context, i.e. `window` must be the transformer's context.  Storage: one buffer of
    `window + slack` positions (at least window + t); when the new positions do not fit, the
    last `window` are copied to its front (once every slack / t calls).  The outputs are
    bit-identical to moshi_mlx's growing KVCache followed by the trim."""

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
