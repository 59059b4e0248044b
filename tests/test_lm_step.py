"""The prepared LM (engine.model.graph.lm_step): same tokens as the stock LmGen path, caches
allocated once.

Runs on the demo model (2 layers, CPU). Each mode is compared with `stock` -- moshi_mlx's
LmGen and caches -- through the server's own `Stepper`, over more steps than one 256-position
cache block and across a segment start.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from engine.model import mlx_env
from engine.model.graph import kv_cache, lm_step
from engine.model.source import ResolvedModel

pytest_plugins = ["conftest_models"]

FAST_MODES = ["onesync", "layered"]
MAX_STEPS = 300  # a segment: the Stepper resets at step 299, after the cache grew at 256
STEPS = 330


@pytest.fixture(scope="module")
def model(demo_files):
    from engine.model.load import load_lm

    resolved = ResolvedModel(
        lm_config=json.loads(demo_files.lm_config.read_text()),
        moshi_weight=demo_files.moshi_bf16, mimi_weight=demo_files.mimi,
        tokenizer=demo_files.tokenizer, quantize_runtime=None, label="test",
    )
    lm, _cfg = load_lm(resolved)
    return lm


def _codes(t: int) -> np.ndarray:
    return np.array([[(t * 37 + k * 11) % 2048] for k in range(8)], dtype=np.uint32)


def _run(model, mode: str, steps: int = STEPS, max_steps: int = MAX_STEPS, seed: int = 7,
         probe_at=()):
    """Stepper tokens for `steps` frames; buffer addresses/shapes at the steps in `probe_at`."""
    import mlx.core as mx

    from engine.model.worker import Stepper

    stepper = Stepper(model, max_steps, mode)
    seen = {"prepared": _buffers(stepper.lm)}
    mx.random.seed(seed)
    out = []
    try:
        for t in range(steps):
            text, audio, segment = stepper.step(_codes(t))
            out.append((text, None if audio is None else audio.tolist(), segment))
            if t in probe_at:
                seen[t] = _buffers(stepper.lm)
        return out, seen, stepper.lm
    finally:
        stepper.lm.restore()


def data_address(arr) -> int:
    """Address of an evaluated array's buffer (CPU/unified memory), to check reuse."""
    import mlx.core as mx

    mx.eval(arr)
    view = arr.view(mx.uint16) if arr.dtype == mx.bfloat16 else arr
    return int(np.array(view, copy=False).__array_interface__["data"][0])


def _buffers(lm: lm_step.PreparedLM):
    arrays = lm.kv_arrays()
    if lm.mode == "onesync":
        for c in lm.model.depformer_cache:
            arrays += [c.self_attn.keys, c.self_attn.values]
    return [(data_address(a), tuple(a.shape)) for a in arrays]


@pytest.fixture(scope="module")
def stock_run(model):
    return _run(model, "stock", probe_at=(100, 280))


def test_stock_caches_grow_and_move(stock_run):
    # The premise: moshi_mlx's LM caches are reallocated (bigger, elsewhere) every 256 steps.
    _tokens, seen, _lm = stock_run
    assert seen["prepared"] == []  # nothing allocated before the first frame
    shapes = {t: [s for _, s in seen[t]] for t in (100, 280)}
    assert shapes[100][0][2] == 256 and shapes[280][0][2] == 512
    assert seen[100][0][0] != seen[280][0][0]


@pytest.mark.parametrize("mode", FAST_MODES)
def test_same_tokens_as_stock_and_caches_never_move(model, stock_run, mode):
    stock_tokens, _seen, _lm = stock_run
    tokens, seen, lm = _run(model, mode, probe_at=(0, 100, 280, 305))
    assert lm.mode == mode and lm.note is None
    # Text and audio tokens equal, step for step, across the 256 block and the segment start.
    assert [t[2] for t in tokens].index(True) == MAX_STEPS - 1
    first_diff = next((i for i, (a, b) in enumerate(zip(stock_tokens, tokens)) if a != b), None)
    assert first_diff is None, f"{mode}: tokens differ from stock from step {first_diff}"
    assert len(tokens) == len(stock_tokens) == STEPS
    assert sum(t[1] is None for t in tokens) == 2  # the first frame of each segment
    # One host transfer per step: the bookkeeping is ours.
    assert lm.host_syncs == STEPS
    # The caches: full size before the first frame, same memory at every step and after reset.
    prepared = seen["prepared"]
    assert prepared and all(s[2] == 512 for _, s in prepared[: 2 * 2])  # 300 -> 2 blocks
    for t in (0, 100, 280, 305):
        assert seen[t] == prepared, f"{mode}: cache buffers changed by step {t}"


def test_layers_handed_over_early_give_the_same_tokens(model, stock_run, monkeypatch):
    """layered with lm_step.EVAL_EVERY_LAYERS: the GPU gets each layer as soon as it is built
    (mx.async_eval); the tokens are stock's, step for step."""
    monkeypatch.setattr(lm_step, "EVAL_EVERY_LAYERS", 1)
    tokens, _seen, lm = _run(model, "layered", probe_at=())
    assert lm.mode == "layered" and tokens == stock_run[0]


def test_q4_steps_give_the_same_tokens_as_stock(demo_files):
    """q4 (quantized embedding tables, which layered joins into one): each mode's tokens are
    stock's, step for step."""
    from engine.model.load import load_lm

    lm_q4, _cfg = load_lm(ResolvedModel(
        lm_config=json.loads(demo_files.lm_config.read_text()), moshi_weight=demo_files.moshi_q4,
        mimi_weight=demo_files.mimi, tokenizer=demo_files.tokenizer, quantize_runtime=None,
        label="test q4"))
    stock = _run(lm_q4, "stock", steps=40)[0]
    for mode in FAST_MODES:
        tokens, _seen, lm = _run(lm_q4, mode, steps=40)
        assert lm.mode == mode and tokens == stock, mode
        if mode == "layered":
            assert lm._audio_table is not None  # the joined table did the lookups


@pytest.mark.parametrize("mode", ["stock"] + FAST_MODES)
def test_reset_starts_a_conversation_like_a_fresh_model(model, mode):
    # Stale cache contents past the new position must not leak into a new segment.
    import mlx.core as mx

    fresh, _seen, _lm = _run(model, mode, steps=40, seed=11)
    handle = lm_step.prepare_lm(model, MAX_STEPS, mode)
    try:
        handle.warm(3)
        assert handle.step_idx == 0
        for t in range(70):  # dirties positions past the 40 compared below
            handle.step(_codes(1000 + t))
        handle.reset()
        mx.random.seed(11)
        again = []
        for t in range(40):
            text, audio = handle.step(_codes(t))
            again.append((text, None if audio is None else audio.tolist(), False))
    finally:
        handle.restore()
    assert again == fresh


def test_unsupported_settings_fall_back_to_stock(model):
    context = model.cfg.transformer.context
    lm = lm_step.prepare_lm(model, context + 2, "layered")
    try:
        assert lm.mode == "stock" and "exceeds the LM context" in lm.note
        text, _audio = lm.step(_codes(0))
        assert 0 <= text < model.cfg.text_out_vocab_size
    finally:
        lm.restore()
    with pytest.raises(ValueError, match="unknown LM step mode"):
        lm_step.prepare_lm(model, 100, "turbo")


def test_full_cache_says_so(model):
    lm = lm_step.prepare_lm(model, 20, "onesync")
    try:
        cache = model.transformer_cache[0].self_attn
        assert isinstance(cache, kv_cache.StaticKVCache) and cache.capacity == 256
        cache.offset = 256
        with pytest.raises(kv_cache.CacheFullError, match="start a new segment"):
            lm.step(_codes(0))
    finally:
        lm.restore()
    assert not isinstance(model.transformer_cache[0].self_attn, kv_cache.StaticKVCache)


def _cuda_here() -> bool:
    """MLX computes on an NVIDIA GPU in this process."""
    import mlx.core as mx

    from tests.conftest import mlx_gpu

    cuda = getattr(mx, "cuda", None)
    return mlx_gpu() is None and cuda is not None and bool(cuda.is_available())


def test_mode_option_and_environment(monkeypatch):
    from engine.errors import UsageError

    monkeypatch.delenv("MOSHI_TUI_LM_MODE", raising=False)
    assert lm_step.lm_mode_from() == lm_step.DEFAULT_MODE == "auto"
    assert lm_step.auto_mode() == ("layered" if _cuda_here() else "onesync")
    monkeypatch.setenv("MOSHI_TUI_LM_MODE", "stock")
    assert lm_step.lm_mode_from(None) == "stock"
    assert lm_step.lm_mode_from("layered") == "layered"
    monkeypatch.setenv("MOSHI_TUI_LM_MODE", "bogus")
    with pytest.raises(UsageError):
        lm_step.lm_mode_from()


def test_auto_mode_prepares_the_machines_choice(model):
    lm = lm_step.prepare_lm(model, 50)
    try:
        assert lm.requested_mode == lm.mode == lm_step.auto_mode()
    finally:
        lm.restore()


def test_mlx_kernel_cache_leaves_tmp(tmp_path, monkeypatch):
    from importlib import metadata

    monkeypatch.setenv("MOSHI_TUI_CACHE", str(tmp_path))
    env = {}
    path = mlx_env.persist_jit_cache(env)
    assert env["MLX_PTX_CACHE_DIR"] == path == str(tmp_path / "mlx-ptx" / metadata.version("mlx"))
    mine = {"MLX_PTX_CACHE_DIR": "/somewhere"}
    assert mlx_env.persist_jit_cache(mine) is None and mine["MLX_PTX_CACHE_DIR"] == "/somewhere"


def test_mlx_settings_reach_the_model_server(tmp_path, monkeypatch):
    """On Linux the CUDA graph size is set for this process and the model server it spawns
    (what the user set is kept); on macOS (Metal has its own default) it is left alone."""
    monkeypatch.setenv("MOSHI_TUI_CACHE", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "linux")
    env = {}
    assert mlx_env.tune_mlx_env(env)["MLX_MAX_OPS_PER_BUFFER"] == "100" == env["MLX_MAX_OPS_PER_BUFFER"]
    mine = {"MLX_MAX_OPS_PER_BUFFER": "30"}
    assert "MLX_MAX_OPS_PER_BUFFER" not in mlx_env.tune_mlx_env(mine)
    assert mine["MLX_MAX_OPS_PER_BUFFER"] == "30"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert "MLX_MAX_OPS_PER_BUFFER" not in mlx_env.tune_mlx_env({})
