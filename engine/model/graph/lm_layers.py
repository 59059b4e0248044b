"""The LM's and the depformer's transformer layers as the layered step builds them.

Same values as moshi_mlx's modules (tested), with fewer operations for MLX to evaluate on the
host: the codebooks' embeddings as one joined table, a one-position layer's queries, keys and
values by a reshape instead of transposes, the depformer's keys and values joined together,
the gating's halves by one split.
"""

from __future__ import annotations


def in_context(x, axis: int, t: int, context: int):
    """Keys or values `x` cut to the last `t + context` positions along `axis` (the `t` new
    ones and the attention's context before them)."""
    k_len = x.shape[axis]
    target = t + min(context, k_len - t)
    if target >= k_len:
        return x
    return x[(slice(None),) * axis + (slice(k_len - target, None),)]


def joined_table(embs):
    """The codebooks' embeddings as one table (their rows one after the other) and each
    codebook's first row, so that one lookup embeds every codebook's token: (module, offsets),
    or None when the tables differ in kind or shape.  A lookup in each table costs a few
    operations for MLX to launch (a quantized table's lookup is a few gathers and a
    dequantization), the joined one a handful; the memory is the tables' once more."""
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


def qkv(layer, xs, offset):
    """A transformer layer's queries, keys and values for `xs` (heads first), rotated to the
    position `offset` when the layer uses RoPE."""
    attn = layer.self_attn
    b, t, _ = xs.shape
    if t == 1:
        joined = qkv_heads_first(layer, xs)
        q, k, v = joined[:, 0], joined[:, 1], joined[:, 2]
    else:
        joined = attn.in_proj(layer.norm1(xs)).reshape(b, t, 3, attn.cfg.num_heads,
                                                       attn.cfg.head_dim)
        q, k, v = (joined[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    if attn.rope is not None:
        q = attn.rope(q, offset=offset)
        k = attn.rope(k, offset=offset)
    return q, k, v


def qkv_heads_first(layer, xs):
    """For one position (`xs` (b, 1, dim)): the queries, keys and values as one (b, 3, heads,
    1, head_dim) array.  With one position, the projection's (b, 1, 3, heads, head_dim) is that
    array's memory already: a reshape, where the general case needs a transpose per tensor
    (every view is a node MLX evaluates on the host)."""
    attn = layer.self_attn
    b = xs.shape[0]
    return attn.in_proj(layer.norm1(xs)).reshape(b, 3, attn.cfg.num_heads, 1,
                                                 attn.cfg.head_dim)


def after_attention(layer, xs, o):
    """The rest of a transformer layer after its attention `o` (heads first): the output
    projection, the residual, the feed-forward and its residual."""
    b, t, hd = xs.shape
    # (one position: heads-first and positions-first are the same memory, a reshape suffices)
    if t == 1:
        o = o.reshape(b, t, hd)
    else:
        o = o.transpose(0, 2, 1, 3).reshape(b, t, hd)
    o = layer.self_attn.out_proj(o)
    xs = xs + layer.layer_scale_1(o)
    return xs + layer.layer_scale_2(feed_forward(layer.gating, layer.norm2(xs)))


def feed_forward(gating, xs):
    """moshi_mlx's MlpGating with one split where it takes two strided halves (fewer views for
    MLX to evaluate, the same values); any other feed-forward as it is."""
    import mlx.core as mx
    import mlx.nn as nn

    if type(gating).__name__ != "MlpGating":
        return gating(xs)
    a, g = mx.split(gating.linear_in(xs), 2, axis=-1)
    return gating.linear_out(nn.silu(a) * g)


def dep_layer(layer, xs, si: int, ks: list, vs: list):
    """A depformer layer at slice `si`; `ks`/`vs` hold the previous slices' keys/values (the
    depformer's positions live in the step's own graph, not in a cache)."""
    import mlx.core as mx

    attn = layer.self_attn
    t = xs.shape[1]
    if t == 1 and attn.rope is None:  # keys and values joined together
        joined = qkv_heads_first(layer, xs)
        q = joined[:, 0]
        ks.append(joined[:, 1:])
        kv = ks[0] if si == 0 else mx.concatenate(ks, axis=3)
        kv = in_context(kv, 3, t, attn.cfg.context)
        kk, vv = kv[:, 0], kv[:, 1]
    else:
        q, k, v = qkv(layer, xs, si)
        ks.append(k)
        vs.append(v)
        kk = ks[0] if si == 0 else mx.concatenate(ks, axis=2)
        vv = vs[0] if si == 0 else mx.concatenate(vs, axis=2)
        kk = in_context(kk, 2, t, attn.cfg.context)
        vv = in_context(vv, 2, t, attn.cfg.context)
    o = mx.fast.scaled_dot_product_attention(q, kk, vv, scale=attn.scale)
    return after_attention(layer, xs, o)
