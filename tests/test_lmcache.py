"""The prepared LM (engine.model.lmcache): same tokens as the stock LmGen path, caches allocated once.

Runs on the demo model (2 layers, CPU). Each mode is compared with `stock` -- moshi_mlx's
LmGen and caches, what the server ran before -- through the server's own `Stepper`, over more
steps than one 256-position cache block and across a segment start.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.model import lmcache
from engine.model.source import ResolvedModel

pytest_plugins = ["conftest_models"]

ROOT = Path(__file__).resolve().parent.parent
FAST_MODES = ["prealloc", "onesync", "fixed", "compiled", "hybrid", "layered"]
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


def _buffers(lm: lmcache.PreparedLM):
    arrays = lm.kv_arrays()
    if lm.mode in ("prealloc", "onesync"):
        for c in lm.model.depformer_cache:
            arrays += [c.self_attn.keys, c.self_attn.values]
    return [(lmcache.data_address(a), tuple(a.shape)) for a in arrays]


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
    # One host transfer per step where the bookkeeping is ours; LmGen's 21 otherwise.
    if mode != "prealloc":
        assert lm.host_syncs == STEPS
    # The caches: full size before the first frame, same memory at every step and after reset.
    prepared = seen["prepared"]
    assert prepared and all(s[2] == 512 for _, s in prepared[: 2 * 2])  # 300 -> 2 blocks
    for t in (0, 100, 280, 305):
        assert seen[t] == prepared, f"{mode}: cache buffers changed by step {t}"


def test_layers_handed_over_early_give_the_same_tokens(model, stock_run, monkeypatch):
    """layered with lmcache.EVAL_EVERY_LAYERS: the GPU gets each layer as soon as it is built
    (mx.async_eval); the tokens are stock's, step for step."""
    monkeypatch.setattr(lmcache, "EVAL_EVERY_LAYERS", 1)
    tokens, _seen, lm = _run(model, "layered", probe_at=())
    assert lm.mode == "layered" and tokens == stock_run[0]


def _graph_ops(lm) -> int:
    """Operations in one step's whole graph (MLX's export_to_dot), the step then undone."""
    import io
    import re

    import mlx.core as mx

    buf = io.StringIO()
    out = lm.lazy_step()
    mx.export_to_dot(buf, out)
    mx.eval(out)
    lm.reset()
    return len(re.findall(r'shape=rectangle', buf.getvalue()))


@pytest.mark.parametrize("mode", ["layered", "compiled"])
def test_the_lean_graph_gives_the_same_tokens_with_fewer_operations(demo_files, mode,
                                                                    monkeypatch):
    """q4 (quantized embedding tables, joined into one): lmcache.LEAN_GRAPH changes how many
    operations MLX evaluates per step, never a token."""
    from engine.model.load import load_lm
    from engine.model.worker import Stepper

    lm_q4, _cfg = load_lm(ResolvedModel(
        lm_config=json.loads(demo_files.lm_config.read_text()), moshi_weight=demo_files.moshi_q4,
        mimi_weight=demo_files.mimi, tokenizer=demo_files.tokenizer, quantize_runtime=None,
        label="test q4"))
    monkeypatch.setattr(lmcache, "EVAL_EVERY_LAYERS", 0)
    runs, ops = {}, {}
    for lean in (False, True):
        monkeypatch.setattr(lmcache, "LEAN_GRAPH", lean)
        ops[lean] = _graph_ops(Stepper(lm_q4, MAX_STEPS, mode).lm)
        runs[lean] = _run(lm_q4, mode, steps=40)[0]
    assert runs[True] == runs[False]
    assert ops[True] < 0.85 * ops[False], ops


@pytest.mark.parametrize("mode", ["stock"] + FAST_MODES)
def test_reset_starts_a_conversation_like_a_fresh_model(model, mode):
    # Stale cache contents past the new position must not leak into a new segment.
    import mlx.core as mx

    fresh, _seen, _lm = _run(model, mode, steps=40, seed=11)
    handle = lmcache.prepare_lm(model, MAX_STEPS, mode)
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
    lm = lmcache.prepare_lm(model, context + 2, "compiled")
    try:
        assert lm.mode == "stock" and "exceeds the LM context" in lm.note
        text, _audio = lm.step(_codes(0))
        assert 0 <= text < model.cfg.text_out_vocab_size
    finally:
        lm.restore()
    with pytest.raises(ValueError, match="unknown LM step mode"):
        lmcache.prepare_lm(model, 100, "turbo")


def test_full_cache_says_so(model):
    lm = lmcache.prepare_lm(model, 20, "prealloc")
    try:
        cache = model.transformer_cache[0].self_attn
        assert isinstance(cache, lmcache.StaticKVCache) and cache.capacity == 256
        cache.offset = 256
        with pytest.raises(lmcache.CacheFullError, match="start a new segment"):
            lm.step(_codes(0))
    finally:
        lm.restore()
    assert not isinstance(model.transformer_cache[0].self_attn, lmcache.StaticKVCache)


def test_mode_option_and_environment(monkeypatch):
    from engine.errors import UsageError

    monkeypatch.delenv("MOSHI_TUI_LM_MODE", raising=False)
    assert lmcache.lm_mode_from({}) == lmcache.DEFAULT_MODE == "auto"
    assert lmcache.auto_mode() == "onesync"  # this CPU; layered on CUDA
    monkeypatch.setenv("MOSHI_TUI_LM_MODE", "fixed")
    assert lmcache.lm_mode_from(None) == "fixed"
    assert lmcache.lm_mode_from({"lm_mode": "compiled"}) == "compiled"
    monkeypatch.setenv("MOSHI_TUI_LM_MODE", "bogus")
    with pytest.raises(UsageError):
        lmcache.lm_mode_from({})


def test_auto_mode_prepares_the_machines_choice(model):
    lm = lmcache.prepare_lm(model, 50)
    try:
        assert lm.requested_mode == lm.mode == lmcache.auto_mode()
    finally:
        lm.restore()


def test_mlx_kernel_cache_leaves_tmp(tmp_path, monkeypatch):
    from importlib import metadata

    monkeypatch.setenv("MOSHI_TUI_CACHE", str(tmp_path))
    env = {}
    path = lmcache.persist_jit_cache(env)
    assert env["MLX_PTX_CACHE_DIR"] == path == str(tmp_path / "mlx-ptx" / metadata.version("mlx"))
    mine = {"MLX_PTX_CACHE_DIR": "/somewhere"}
    assert lmcache.persist_jit_cache(mine) is None and mine["MLX_PTX_CACHE_DIR"] == "/somewhere"


def test_mlx_settings_reach_the_model_server(tmp_path, monkeypatch):
    """On Linux the CUDA graph size is set for this process and the model server it spawns
    (what the user set is kept); on macOS (Metal has its own default) it is left alone."""
    monkeypatch.setenv("MOSHI_TUI_CACHE", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "linux")
    env = {}
    assert lmcache.tune_mlx_env(env)["MLX_MAX_OPS_PER_BUFFER"] == "100" == env["MLX_MAX_OPS_PER_BUFFER"]
    mine = {"MLX_MAX_OPS_PER_BUFFER": "30"}
    assert "MLX_MAX_OPS_PER_BUFFER" not in lmcache.tune_mlx_env(mine)
    assert mine["MLX_MAX_OPS_PER_BUFFER"] == "30"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert "MLX_MAX_OPS_PER_BUFFER" not in lmcache.tune_mlx_env({})


def test_gpu_probe_runs_on_the_demo_model(tmp_path):
    out = tmp_path / "probe.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_step_probe.py"), "--demo",
         "--variants", "stock,compiled,layered@PROBE_PACE_MS=40+PROBE_SPLIT=1+PROBE_CONTEXT=3",
         "--steps", "12",
         "--second-pass", "4",
         "--segment-steps", "0", "--max-steps", "10", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    runs = {x["variant"]: x for x in report["runs"]}
    paced_name = "layered@PROBE_PACE_MS=40+PROBE_SPLIT=1+PROBE_CONTEXT=3"
    assert set(runs) == {"stock", "compiled", paced_name}
    for name, run in runs.items():
        p1 = run["passes"][0]
        assert p1["steps"] == 12 and len(p1["times_ms"]) == 12 and p1["segments"] == [9 - run.get("context", 0)]
        assert p1["stats"]["p50"] > 0 and run["lm_mode"] == name.partition("@")[0]
        assert run["ops"]["compute"] > 0 and run["stderr_thrashing"] == []
    assert runs["compiled"]["passes"][0]["host_syncs"] == 12
    assert runs["compiled"]["ops"]["compute"] < runs["stock"]["ops"]["compute"]
    # a paced variant starts its steps on the clock: 12 steps take at least 11 periods
    paced = runs[paced_name]
    assert paced["env"]["PROBE_PACE_MS"] == "40" and paced["passes"][0]["pace_ms"] == 40.0
    assert paced["passes"][0]["wall_s"] >= 11 * 0.040
    assert runs["stock"]["passes"][0]["pace_ms"] == 0.0
    # PROBE_CONTEXT: untimed steps first; PROBE_SPLIT: a pass timing build / hand-over / wait
    assert paced["context"] == 3
    split = paced["passes"][-1]
    assert split["pass"] == 4 and split["stats"]["n"] == 100
    assert all(split["split"][k]["n"] == 100 for k in ("build", "submit", "wait"))
    assert "summary" in r.stdout
