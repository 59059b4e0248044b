"""Full-size random Moshi (engine.model.fullsize): structure from shapes alone, quantized as Kyutai
ships it, a matching 32k tokenizer, and the MLX random stream left alone (engine.model.demo too).

Nothing here evaluates a 7B parameter: MLX arrays stay lazy until evaluated, so shapes, names
and counts of the full-size model cost a few MB.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from engine.model import demo, fullsize
from engine.model.demo import weights
from engine.model.safetensors import read_safetensors_header
from engine.model.source import ResolvedModel

pytest_plugins = ["conftest_models"]

# Moshi v0.1 by hand: 32 layers x (4096*12288 + 4096^2 + 4096*22528 + 11264*4096 + 2*4096)
# + text emb 32001*4096 + out norm 4096 + text head 32000*4096 + 16 audio embs 2049*4096
# + depformer: slice 0 emb 32001*1024, 7 slices emb 2049*1024, 8 x (linear_in 4096*1024
#   + linear_out 1024*2048 + 6 layers x (1024*3072 + 1024^2 + 1024*5632 + 2816*1024 + 2048)).
V0_1_PARAMS = 7_687_815_168


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _shapes(model) -> dict[str, tuple[tuple[int, ...], str]]:
    from mlx.utils import tree_flatten

    return {k: (tuple(v.shape), str(v.dtype)) for k, v in tree_flatten(model.parameters())}


def test_full_size_v0_1_has_7_7b_parameters_without_materialising_them():
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    model = fullsize.build_lm(None, "bf16", materialize=False)
    assert time.perf_counter() - t0 < 10
    assert fullsize.count_params(model) == V0_1_PARAMS == fullsize.MOSHI_V0_1_PARAMS
    assert fullsize.expected_params(model.cfg) == V0_1_PARAMS
    shapes = _shapes(model)
    assert shapes["text_linear.weight"] == ((32000, 4096), "mlx.core.bfloat16")
    assert shapes["transformer.layers.31.self_attn.in_proj.weight"][0] == (12288, 4096)
    assert shapes["transformer.layers.31.gating.linear_in.weight"][0] == (22528, 4096)
    assert shapes["depformer.slices.7.linear_out.weight"][0] == (2048, 1024)
    assert "transformer.layers.32.norm1.weight" not in shapes
    assert {dt for _, dt in shapes.values()} == {"mlx.core.bfloat16"}
    assert _rss_mb() - rss0 < 500  # 15 GB if anything had been evaluated


@pytest.mark.parametrize("quant,bits,group", [("q4", 4, 32), ("q8", 8, 64)])
def test_full_size_quantization_covers_every_linear_and_embedding(quant, bits, group):
    import mlx.nn as nn

    rss0 = _rss_mb()
    ref = fullsize.build_lm(None, "bf16", materialize=False)
    layers = {p for p, m in ref.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    model = fullsize.build_lm(None, quant, materialize=False)
    q = fullsize.quantized_modules(model)
    assert set(q) == layers and len(q) == 362  # 32*4 + 3 + 16 + 8 * (3 + 6*4)
    assert set(q.values()) == {(bits, group)}
    shapes = _shapes(model)
    assert shapes["transformer.layers.0.self_attn.in_proj.weight"] == (
        (12288, 4096 * bits // 32), "mlx.core.uint32")
    assert shapes["transformer.layers.0.self_attn.in_proj.scales"] == (
        (12288, 4096 // group), "mlx.core.bfloat16")
    assert shapes["audio_embs.3.weight"] == ((2049, 4096 * bits // 32), "mlx.core.uint32")
    # Norms stay full precision.
    assert shapes["transformer.layers.5.norm2.weight"] == ((4096,), "mlx.core.bfloat16")
    assert shapes["out_norm.weight"] == ((4096,), "mlx.core.bfloat16")
    assert _rss_mb() - rss0 < 500


@pytest.mark.parametrize("quant,name", [("bf16", demo.MOSHI_BF16_NAME),
                                        ("q8", demo.MOSHI_Q8_NAME), ("q4", demo.MOSHI_Q4_NAME)])
def test_a_build_has_exactly_the_tensors_of_kyutais_files(demo_files, quant, name):
    # At the demo's config, a build must be tensor for tensor what the demo files (written
    # as Kyutai writes its bf16/q8/q4 files) hold: names, shapes and dtypes.
    header = read_safetensors_header(demo_files.root / name).tensors
    want = {k: (tuple(v["shape"]), v["dtype"]) for k, v in header.items()}
    dt = {"mlx.core.bfloat16": "BF16", "mlx.core.uint32": "U32"}
    got = {k: (s, dt[d]) for k, (s, d) in
           _shapes(fullsize.build_lm(json.loads(demo_files.lm_config.read_text()), quant,
                                     materialize=False)).items()}
    assert got == want


def test_a_small_build_materialises_saves_and_loads(demo_files, tmp_path):
    import mlx.core as mx

    from engine.model.graph.lm_step import prepare_lm
    from engine.model.load import load_lm

    path = tmp_path / "model.q4.safetensors"
    messages = []
    model = fullsize.build_lm("demo", "q4", save=path, progress=messages.append)
    assert path.is_file() and any("saved" in m for m in messages)
    again = fullsize.build_lm("demo", "q4")  # same seed, same weights
    w1, w2 = model.text_linear.weight, again.text_linear.weight
    assert mx.array_equal(w1, w2).item()
    other = fullsize.build_lm("demo", "q4", seed=5)
    assert not mx.array_equal(w1, other.text_linear.weight).item()
    resolved = ResolvedModel(
        lm_config=json.loads(demo_files.lm_config.read_text()), moshi_weight=path,
        mimi_weight=demo_files.mimi, tokenizer=demo_files.tokenizer, quantize_runtime=None,
        label="test",
    )
    loaded, cfg = load_lm(resolved)  # detects q4 from the file, loads strictly
    lm = prepare_lm(loaded, 50, "onesync")
    try:
        texts = [lm.step(np.zeros((8, 1), np.uint32))[0] for _ in range(3)]
    finally:
        lm.restore()
    assert all(0 <= t < cfg.text_out_vocab_size for t in texts)


def test_builds_and_the_demo_leave_the_callers_random_stream_alone():
    import mlx.core as mx

    mx.random.seed(4242)
    expected = mx.random.uniform(shape=(4,))
    mx.random.seed(4242)
    fullsize.build_lm(None, "q4", materialize=False)
    weights.mimi_tensor_specs()
    key = weights.save_random_key()
    weights.restore_random_key(key)
    assert weights.save_random_key() == key
    assert mx.array_equal(mx.random.uniform(shape=(4,)), expected).item()


def test_the_32k_text_tokenizer_covers_every_text_token(tmp_path):
    from engine.model.load import load_text_tokenizer

    t0 = time.perf_counter()
    path = fullsize.ensure_text_tokenizer(32000, cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 10  # training a real 32k model takes ~25-40 s
    sp = load_text_tokenizer(path, text_card=32000)
    assert sp.vocab_size() == 32000
    pieces = [sp.id_to_piece(i) for i in range(32000)]
    assert len(set(pieces)) == 32000
    assert pieces[:4] == ["<unk>", "<s>", "</s>", "<pad>"]
    text = "Hello, how are you doing today?"
    assert sp.decode(sp.encode(text)) == text
    assert sp.decode([31999, 20000]) == pieces[31999].lstrip("\u2581") + pieces[20000]
    mtime = path.stat().st_mtime_ns
    assert fullsize.ensure_text_tokenizer(32000, cache_dir=tmp_path) == path  # cached
    assert path.stat().st_mtime_ns == mtime
    assert fullsize.build_text_tokenizer(32000) == path.read_bytes()  # deterministic


def test_unknown_quantization_and_config_are_refused():
    with pytest.raises(ValueError, match="unsupported quantization"):
        fullsize.build_lm(None, "q3", materialize=False)
    with pytest.raises(ValueError, match="unknown LM config"):
        fullsize.lm_config("v9")
