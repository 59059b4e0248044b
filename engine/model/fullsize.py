"""Full-size Moshi with random weights, built in memory, for people and benches.

`build_lm()` makes Moshi v0.1 (7B, `moshi_mlx.models.config_v0_1()`) -- or any LM config
dict in Kyutai's config.json format, as `engine.model.lm_config.make_lm_config` reads it -- with
random weights in bf16, q8 (group 64) or q4 (group 32), the layers quantized the way Kyutai
quantizes them (`nn.quantize`: every Linear and Embedding), so the model is exactly what
`load_lm` builds from Kyutai's files. Nothing is downloaded and nothing is written unless a
save path is given.

MLX arrays are lazy: building the module only records how each parameter is made (moshi_mlx's
own initialisers, from MLX's random generator seeded once); `materialize=True` then evaluates
all parameters in one `mx.eval` (on a GPU, a few seconds for 7.7B). Without it nothing is
computed, so the structure (names, shapes, the parameter count) costs no memory.

`ensure_text_tokenizer()` gives a matching 32000-piece sentencepiece model made locally in
milliseconds: a small model trained on the demo corpus, its piece list extended with
synthetic syllable pieces up to the vocabulary size (the protobuf is edited directly; no
protobuf package needed). Training a real 32k unigram model instead takes tens of seconds
(`train=True`). The result is cached next to the demo model.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from moshi_mlx.models import Lm, LmConfig

Progress = Callable[[str], None]

# Parameters of Moshi v0.1 (config_v0_1, bf16), from its shapes; see expected_params().
MOSHI_V0_1_PARAMS = 7_687_815_168
# Quantizations as Kyutai ships them: name -> (bits, group size); bf16 -> None.
QUANTIZATIONS: dict[str, tuple[int, int] | None] = {"bf16": None, "q8": (8, 64), "q4": (4, 32)}
SEED = 299792458  # the seed Kyutai's local.py gives MLX before building the model
TOKENIZER_VOCAB = 32000
TOKENIZER_DIR = "fullsize"


def lm_config(config: dict | str | None = None) -> "LmConfig":
    """moshi_mlx's LmConfig: None or "v0_1" -> Moshi 7B; "demo" -> the demo model's; a dict
    in Kyutai's config.json format -> that."""
    from moshi_mlx import models

    from engine.model.lm_config import make_lm_config

    if config is None or config == "v0_1":
        return models.config_v0_1()
    if config == "demo":
        from engine.model.demo import DEMO_LM_CONFIG

        return make_lm_config(DEMO_LM_CONFIG)
    if isinstance(config, dict):
        return make_lm_config(config)
    raise ValueError(f"unknown LM config {config!r} (None, 'v0_1', 'demo' or a dict)")


def quantization(quant: str | int | None) -> tuple[int, int] | None:
    """(bits, group size) for "q4"/4, "q8"/8; None for "bf16"/None."""
    if quant is None or quant == "bf16":
        return None
    key = quant if isinstance(quant, str) else f"q{quant}"
    try:
        q = QUANTIZATIONS[key]
    except KeyError:
        raise ValueError(f"unsupported quantization {quant!r} (bf16, q8 or q4)") from None
    return q


def build_lm(
    config: dict | str | None = None,
    quant: str | int | None = "bf16",
    *,
    seed: int = SEED,
    materialize: bool = True,
    save: str | Path | None = None,
    progress: Progress | None = None,
) -> "Lm":
    """A random Moshi LM of the given config and quantization (see the module docstring).

    The caller's MLX random stream is left as it was. `save` writes the weights as one
    safetensors file (15.4 GB bf16, 8.2 GB q8, 4.8 GB q4 at full size) and implies
    `materialize`.
    """
    import mlx.core as mx
    import mlx.nn as nn
    from moshi_mlx import models

    from engine.model.demo.weights import restore_random_key, save_random_key

    cfg = lm_config(config)
    q = quantization(quant)
    t0 = time.perf_counter()
    saved = save_random_key()
    try:
        mx.random.seed(seed)
        model = models.Lm(cfg)
        model.set_dtype(mx.bfloat16)
        if q is not None:
            bits, group = q
            nn.quantize(model, group_size=group, bits=bits)
    finally:
        restore_random_key(saved)
    _say(progress, f"built {count_params(model) / 1e9:.2f}B-entry LM graph in"
                   f" {time.perf_counter() - t0:.2f} s (lazy)")
    if materialize or save is not None:
        t1 = time.perf_counter()
        mx.eval(model.parameters())
        _say(progress, f"materialized the weights in {time.perf_counter() - t1:.2f} s")
    if save is not None:
        t2 = time.perf_counter()
        model.save_weights(str(save))
        _say(progress, f"saved {save} in {time.perf_counter() - t2:.1f} s")
    return model


def count_params(model) -> int:
    """Number of stored entries over all parameters, from their shapes (nothing evaluated).
    For a quantized model that counts packed uint32 words, scales and biases."""
    from mlx.utils import tree_flatten

    return sum(math.prod(arr.shape) for _, arr in tree_flatten(model.parameters()))


def expected_params(cfg: "LmConfig") -> int:
    """The bf16 parameter count of `moshi_mlx.models.Lm(cfg)`, from the config alone."""

    def layer(t) -> int:
        hidden = 2 * t.dim_feedforward // 3
        if t.dim_feedforward == 4 * t.d_model:
            hidden = 11 * t.d_model // 4
        d = t.d_model
        n = 3 * d * d + d * d + d * 2 * hidden + hidden * d + 2 * d  # attn, MLP, 2 RMSNorms
        if t.layer_scale is not None:
            n += 2 * d
        if t.cross_attention:
            n += 3 * d * d + d * d + 2 * d
        return n

    t, dep = cfg.transformer, cfg.depformer
    d = t.d_model
    n = t.num_layers * layer(t)
    n += cfg.text_in_vocab_size * d + d + cfg.text_out_vocab_size * d  # text emb, norm, head
    n += cfg.audio_codebooks * cfg.audio_vocab_size * d
    n += cfg.extra_heads_num_heads * d * cfg.extra_heads_dim
    dd = dep.transformer.d_model
    for i in range(dep.num_slices):
        vocab = cfg.text_in_vocab_size if i == 0 else cfg.audio_vocab_size
        n += vocab * (dep.low_rank_embeddings or dd)
        if dep.low_rank_embeddings:
            n += dep.low_rank_embeddings * dd
        n += d * dd + dd * (cfg.audio_vocab_size - 1)  # linear_in, linear_out
        n += dep.transformer.num_layers * layer(dep.transformer)
    if cfg.demux_second_stream:
        raise ValueError("demux_second_stream is not counted")
    return n


def quantized_modules(model) -> dict[str, tuple[int, int]]:
    """{module path: (bits, group size)} of every quantized module."""
    import mlx.nn as nn

    return {
        path: (m.bits, m.group_size)
        for path, m in model.named_modules()
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
    }


# ---------------------------------------------------------------------------------------
# the text tokenizer


def tokenizer_path(vocab_size: int = TOKENIZER_VOCAB, cache_dir: Path | None = None) -> Path:
    from engine.model.demo import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir().parent / TOKENIZER_DIR
    return root / f"tokenizer_spm_{vocab_size}.model"


def ensure_text_tokenizer(
    vocab_size: int = TOKENIZER_VOCAB,
    cache_dir: Path | None = None,
    *,
    train: bool = False,
    progress: Progress | None = None,
) -> Path:
    """The path of a cached `vocab_size`-piece sentencepiece model, made first if missing."""
    path = tokenizer_path(vocab_size, cache_dir)
    if train:
        path = path.with_name(path.stem + "-trained.model")
    if path.is_file() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = train_text_tokenizer(vocab_size) if train else build_text_tokenizer(vocab_size)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _say(progress, f"text tokenizer ({vocab_size} pieces) made in"
                   f" {time.perf_counter() - t0:.1f} s: {path}")
    return path


def build_text_tokenizer(vocab_size: int = TOKENIZER_VOCAB, base_size: int = 1000) -> bytes:
    """A `vocab_size`-piece unigram model: the demo's trained `base_size`-piece model (its
    normalizer, special ids 0-3 and pieces) plus synthetic pieces with lower scores."""
    from engine.model.demo import build_text_tokenizer as train_small

    base = train_small(base_size)
    if vocab_size <= base_size:
        return train_small(vocab_size)
    fields = _pb_fields(base)
    pieces = [_pb_piece(v) for f, _, v in fields if f == 1]
    have = {p for p, _, _ in pieces}
    low = min(s for _, s, t in pieces if t == 1)
    extra = []
    for word in _syllable_words():
        if len(pieces) + len(extra) >= vocab_size:
            break
        if word not in have:
            have.add(word)
            extra.append(word)
    out = bytearray()
    for f, wt, v in fields:
        if f == 1:
            continue
        if f == 2:  # trainer spec: say the vocabulary size it now has
            v = _pb_set_varint(v, 4, vocab_size)
        out += _pb_len_field(f, v) if wt == 2 else _pb_raw_field(f, wt, v)
    head = bytearray()
    for p, s, t in pieces:
        head += _pb_len_field(1, _pb_make_piece(p, s, t))
    for i, word in enumerate(extra):
        head += _pb_len_field(1, _pb_make_piece(word, low - 1.0 - i * 1e-4, 1))
    return bytes(head + out)


def train_text_tokenizer(vocab_size: int = TOKENIZER_VOCAB, seed: int = 1000) -> bytes:
    """A really trained unigram model on random syllable text (slow: tens of seconds)."""
    import io
    import random

    import sentencepiece as spm

    rng = random.Random(seed)
    syl = list(_syllables())
    lines = [
        " ".join("".join(rng.choice(syl) for _ in range(rng.randint(1, 4)))
                 for _ in range(rng.randint(4, 12)))
        for _ in range(60000)
    ]
    spm.set_random_generator_seed(seed)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, num_threads=1, unk_id=0, bos_id=1,
        eos_id=2, pad_id=3, hard_vocab_limit=True, minloglevel=2,
    )
    return out.getvalue()


def _syllables():
    for c in "bcdfghjklmnprstvwz":
        for v in "aeiou":
            yield c + v


def _syllable_words():
    syl = list(_syllables())
    for n in itertools.count(1):
        for combo in itertools.product(syl, repeat=n):
            word = "".join(combo)
            yield "\u2581" + word
            yield word


# A minimal protobuf wire-format reader/writer for sentencepiece's ModelProto:
# field 1 = repeated SentencePiece {1: piece (string), 2: score (float), 3: type (enum)},
# field 2 = TrainerSpec (4: vocab_size), 3 = NormalizerSpec, ... (kept as bytes).


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _enc_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _pb_fields(buf: bytes) -> list[tuple[int, int, object]]:
    """[(field, wire type, value)]: varint -> int, fixed -> raw bytes, length -> bytes."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i : i + 8], i + 8
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = buf[i : i + n], i + n
        elif wt == 5:
            v, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        out.append((field, wt, v))
    return out


def _pb_len_field(field: int, value: bytes) -> bytes:
    return _enc_varint(field << 3 | 2) + _enc_varint(len(value)) + bytes(value)


def _pb_raw_field(field: int, wt: int, value) -> bytes:
    key = _enc_varint(field << 3 | wt)
    return key + (_enc_varint(value) if wt == 0 else bytes(value))


def _pb_piece(buf: bytes) -> tuple[str, float, int]:
    piece, score, typ = "", 0.0, 1
    for f, _, v in _pb_fields(buf):
        if f == 1:
            piece = bytes(v).decode("utf-8")
        elif f == 2:
            score = struct.unpack("<f", v)[0]
        elif f == 3:
            typ = v
    return piece, score, typ


def _pb_make_piece(piece: str, score: float, typ: int) -> bytes:
    out = _pb_len_field(1, piece.encode("utf-8")) + _enc_varint(2 << 3 | 5)
    out += struct.pack("<f", score)
    if typ != 1:
        out += _enc_varint(3 << 3 | 0) + _enc_varint(typ)
    return out


def _pb_set_varint(buf: bytes, field: int, value: int) -> bytes:
    out = bytearray()
    for f, wt, v in _pb_fields(buf):
        if f == field and wt == 0:
            continue
        out += _pb_len_field(f, v) if wt == 2 else _pb_raw_field(f, wt, v)
    return bytes(out + _enc_varint(field << 3 | 0) + _enc_varint(value))


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
