"""Model sources and loading: the demo files, every quantization path, and one-line errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelLoadError, ModelSourceError
from engine.model import demo
from engine.model.demo.cache import lock
from engine.model.safetensors import read_safetensors_header
from engine.model.source import ModelOptions, ResolvedModel, resolve

pytest_plugins = ["conftest_models"]

ROOT = Path(__file__).resolve().parent.parent


def _resolved(files: demo.DemoFiles, moshi: Path, **kw) -> ResolvedModel:
    base = dict(
        lm_config=json.loads(files.lm_config.read_text()),
        moshi_weight=moshi,
        mimi_weight=files.mimi,
        tokenizer=files.tokenizer,
        quantize_runtime=None,
        label="test",
    )
    base.update(kw)
    return ResolvedModel(**base)


# --------------------------------------------------------------------------- demo files


def test_demo_files_have_kyutai_names_and_config(demo_files):
    from moshi_mlx import models

    names = {p.name for p in demo_files.root.iterdir()}
    assert set(demo.ALL_FILES) | {demo.MANIFEST_NAME} <= names
    cfg = models.LmConfig.from_config_dict(json.loads(demo_files.lm_config.read_text()))
    assert cfg.transformer.d_model == 256 and cfg.transformer.num_layers == 2
    assert cfg.depformer.transformer.d_model == 128 and cfg.depformer.num_slices == 8
    assert cfg.text_out_vocab_size == 1000 and cfg.audio_codebooks == 16
    assert cfg.audio_delays == ([0] + [1] * 7) * 2


def test_demo_tokenizer_covers_every_text_token(demo_files):
    from engine.model.load import load_text_tokenizer

    sp = load_text_tokenizer(demo_files.tokenizer, text_card=1000)
    pieces = [sp.id_to_piece(i) for i in range(1000)]
    assert pieces[:4] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert sum(p.startswith("\u2581") for p in pieces) > 300
    assert "".join(sp.encode("the weather is lovely today", out_type=str)).replace("\u2581", " ")


def test_demo_mimi_encodes_and_decodes_in_rustymimi(demo_files):
    import rustymimi

    from engine.model.load import check_mimi

    info = check_mimi(demo_files.mimi)
    assert len(info.tensors) == 318
    tok = rustymimi.StreamTokenizer(str(demo_files.mimi))
    t = np.arange(1920, dtype=np.float32)
    tok.encode((0.1 * np.sin(2 * np.pi * 220 * t / 24000)).astype(np.float32))
    codes = _poll(tok.get_encoded)
    assert codes.dtype == np.uint32 and codes.shape == (8, 1)
    assert (codes < 2048).all()
    tok.decode(codes.reshape(1, 8))
    pcm = _poll(tok.get_decoded)
    assert pcm.dtype == np.float32 and pcm.shape == (1920,)
    assert np.isfinite(pcm).all() and np.abs(pcm).max() < 1.0


def _poll(get, timeout=20.0):
    deadline = time.monotonic() + timeout
    while (out := get()) is None:
        assert time.monotonic() < deadline, "rustymimi produced nothing"
        time.sleep(0.002)
    return out


def test_demo_generation_is_deterministic(demo_files, tmp_path):
    written = demo.write_demo_files(tmp_path, ["config", "tokenizer", "lm"])
    assert len(written) == 5
    for path in written:
        assert path.read_bytes() == (demo_files.root / path.name).read_bytes(), path.name


def test_demo_is_reused_when_intact(demo_cache, demo_files):
    before = {p.name: p.stat().st_mtime_ns for p in demo_files.root.iterdir()}
    messages = []
    again = demo.ensure_demo(progress=messages.append, verify=True)
    assert again == demo_files
    assert messages == []
    assert {p.name: p.stat().st_mtime_ns for p in demo_files.root.iterdir()} == before


def _copy_demo(files: demo.DemoFiles, dest: Path) -> demo.DemoFiles:
    dest.mkdir(parents=True)
    for src in files.root.iterdir():
        if src.name == demo.MIMI_NAME:
            try:  # 385 MB: share it (repairs replace files, never write into them)
                os.link(src, dest / src.name)
                continue
            except OSError:
                pass
        shutil.copy2(src, dest / src.name)
    return demo.DemoFiles.at(dest)


def test_demo_regenerates_a_truncated_file(demo_files, tmp_path):
    copy = _copy_demo(demo_files, tmp_path / demo.DEMO_DIR_NAME)
    good = copy.tokenizer.read_bytes()
    mimi_mtime = copy.mimi.stat().st_mtime_ns
    with open(copy.tokenizer, "r+b") as fh:
        fh.truncate(100)
    messages = []
    demo.ensure_demo(copy.root, progress=messages.append)
    assert copy.tokenizer.read_bytes() == good
    assert any("repairing" in m and demo.TOKENIZER_NAME in m for m in messages), messages
    assert copy.mimi.stat().st_mtime_ns == mimi_mtime  # only the damaged part was remade


def test_demo_verify_catches_same_size_corruption(demo_files, tmp_path):
    copy = _copy_demo(demo_files, tmp_path / demo.DEMO_DIR_NAME)
    data = bytearray(copy.moshi_q4.read_bytes())
    data[-10] ^= 0xFF
    copy.moshi_q4.write_bytes(bytes(data))
    demo.ensure_demo(copy.root)  # size check only: not noticed
    assert copy.moshi_q4.read_bytes() == bytes(data)
    demo.ensure_demo(copy.root, verify=True)
    assert copy.moshi_q4.read_bytes() == demo_files.moshi_q4.read_bytes()


def test_demo_regenerates_a_missing_file_and_leaves_no_temp_dirs(demo_files, tmp_path):
    copy = _copy_demo(demo_files, tmp_path / demo.DEMO_DIR_NAME)
    copy.moshi_q8.unlink()
    demo.ensure_demo(copy.root)
    assert copy.moshi_q8.read_bytes() == demo_files.moshi_q8.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        demo.DEMO_DIR_NAME
    ]


def test_demo_generation_waits_for_the_lock(demo_files, tmp_path):
    import threading

    copy = _copy_demo(demo_files, tmp_path / demo.DEMO_DIR_NAME)
    with open(copy.tokenizer, "r+b") as fh:
        fh.truncate(10)
    messages: list[str] = []
    worker = threading.Thread(target=demo.ensure_demo, args=(copy.root, messages.append))
    with lock(tmp_path / f".{demo.DEMO_DIR_NAME}.lock", None):  # another generator
        worker.start()
        deadline = time.monotonic() + 10
        while not any("waiting" in m for m in messages):
            assert time.monotonic() < deadline, messages
            time.sleep(0.01)
        assert copy.tokenizer.stat().st_size == 10
    worker.join(30)
    assert copy.tokenizer.read_bytes() == demo_files.tokenizer.read_bytes()


# --------------------------------------------------------------------------- resolve


def test_resolve_demo_variants(demo_files):
    bf16 = resolve(ModelOptions(demo=True))
    assert (bf16.moshi_weight, bf16.label, bf16.quantize_runtime) == (
        demo_files.moshi_bf16,
        "demo (bf16)",
        None,
    )
    q4 = resolve(ModelOptions(demo=True, quantized=4))
    assert (q4.moshi_weight, q4.label, q4.quantize_runtime) == (
        demo_files.moshi_q4,
        "demo (q4)",
        None,
    )
    assert q4.mimi_weight == demo_files.mimi and q4.tokenizer == demo_files.tokenizer
    assert q4.lm_config["dim"] == 256
    rt = resolve(ModelOptions(demo=True, quantized=8, moshi_weight=demo_files.moshi_bf16))
    assert rt.quantize_runtime == 8 and "q8" in rt.label
    pre = resolve(ModelOptions(demo=True, quantized=4, moshi_weight=demo_files.moshi_q4))
    assert pre.quantize_runtime is None
    assert pickle.loads(pickle.dumps(q4)) == q4  # crosses to the spawned server


def test_resolve_local_paths_are_checked_up_front(demo_files, tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelSourceError, match=f"moshi weights not found: {missing}") as e:
        resolve(ModelOptions(moshi_weight=missing, mimi_weight=demo_files.mimi,
                             tokenizer=demo_files.tokenizer))
    assert e.value.exit_code == 2
    with pytest.raises(ModelSourceError, match="text tokenizer not found"):
        resolve(ModelOptions(demo=True, tokenizer=tmp_path / "x.model"))
    with pytest.raises(ModelSourceError, match="mimi weights is a directory"):
        resolve(ModelOptions(demo=True, mimi_weight=tmp_path))
    local = resolve(ModelOptions(moshi_weight=demo_files.moshi_bf16, mimi_weight=demo_files.mimi,
                                 tokenizer=demo_files.tokenizer, lm_config=demo_files.lm_config))
    assert local.source == "local" and local.label == "model.safetensors (bf16)"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON: .* line 1 column 2"),
        ("[1, 2]", "must be a JSON object"),
        ('{"dim": 256}', "is missing keys 'num_heads'"),
        ("PATCH_DELAYS", "'delays' has 16 entries, expected n_q \\+ 1 = 17"),
    ],
)
def test_invalid_lm_config_is_a_source_error(demo_files, tmp_path, content, message):
    if content == "PATCH_DELAYS":
        cfg = json.loads(demo_files.lm_config.read_text())
        cfg["delays"] = cfg["delays"][1:]
        content = json.dumps(cfg)
    bad = tmp_path / "config.json"
    bad.write_text(content)
    with pytest.raises(ModelSourceError, match=message) as e:
        resolve(ModelOptions(demo=True, lm_config=bad))
    assert str(bad) in str(e.value) and e.value.exit_code == 2
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "quantized, repo", [(None, "kyutai/moshiko-mlx-q4"), (8, "kyutai/moshiko-mlx-q8")]
)
def test_unreachable_hub_names_the_repo_and_the_way_out(tmp_path, quantized, repo):
    code = (
        "from engine.model.source import ModelOptions, resolve\n"
        "from engine.errors import ModelSourceError\n"
        f"try:\n    resolve(ModelOptions(quantized={quantized!r}))\n"
        "except ModelSourceError as e:\n    print(e.exit_code, e)\nelse:\n    print('resolved')\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(ROOT))
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith("1 ") and repo in line and "--demo" in line and "--moshi-weight" in line
    assert "\n" not in line


def _fake_hf_repo(hf_home: Path, repo: str, files: dict[str, Path | str]) -> None:
    """A Hugging Face cache entry for `repo`, as hf_hub_download leaves it (offline use)."""
    commit = "0123456789abcdef" * 2 + "01234567"
    base = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, Path):
            os.symlink(content, snap / name)
        else:
            (snap / name).write_text(content)


def test_hf_file_choice_from_an_offline_cache(demo_files, tmp_path):
    hf_home = tmp_path / "hf"
    config = json.loads(demo_files.lm_config.read_text())
    common = {demo.MIMI_NAME: demo_files.mimi, demo.TOKENIZER_NAME: demo_files.tokenizer}
    # A bf16 repo with a config.json: -q 4 falls back to runtime quantization.
    _fake_hf_repo(hf_home, "kyutai/moshiko-mlx-bf16", {
        "config.json": json.dumps(config), "model.safetensors": demo_files.moshi_bf16, **common})
    # The default q4 repo without config.json: Kyutai's default file names.
    _fake_hf_repo(hf_home, "kyutai/moshiko-mlx-q4", {
        "model.q4.safetensors": demo_files.moshi_q4, **common})
    code = """if True:
        import json
        from engine.model.source import ModelOptions, resolve
        from engine.errors import ModelSourceError
        cases = [dict(hf_repo="kyutai/moshiko-mlx-bf16", quantized=4),
                 dict(hf_repo="kyutai/moshiko-mlx-bf16"),
                 dict(),
                 dict(hf_repo="kyutai/moshiko-mlx-q4", quantized=8)]
        for case in cases:
            try:
                r = resolve(ModelOptions(**case))
                print(json.dumps([r.moshi_weight.name, r.quantize_runtime, r.label,
                                  r.lm_config is not None, r.mimi_weight.name, r.source]))
            except ModelSourceError as e:
                print(json.dumps(["error", e.exit_code, str(e)]))
    """
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), PYTHONPATH=str(ROOT))
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows[0] == ["model.safetensors", 4, "kyutai/moshiko-mlx-bf16 (q4, quantized at load)",
                       True, demo.MIMI_NAME, "hf"]
    assert rows[1] == ["model.safetensors", None, "kyutai/moshiko-mlx-bf16 (bf16)", True,
                       demo.MIMI_NAME, "hf"]
    assert rows[2] == ["model.q4.safetensors", None, "kyutai/moshiko-mlx-q4 (q4)", False,
                       demo.MIMI_NAME, "hf"]
    # Neither q8 nor bf16 is cached and the hub is off: say so, not "the repo lacks them".
    assert rows[3][:2] == ["error", 1] and "cannot reach the Hugging Face hub" in rows[3][2]


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    "variant", ["bf16", "q8", "q4", "bf16->q8", "bf16->q4"],
)
def test_every_quantization_loads_and_steps(demo_files, variant):
    import mlx.core as mx
    import mlx.nn as nn

    from engine.model.load import load_lm, make_gen

    if "->" in variant:
        bits = int(variant[-1])
        opts = ModelOptions(demo=True, quantized=bits, moshi_weight=demo_files.moshi_bf16)
    else:
        bits = None if variant == "bf16" else int(variant[1])
        opts = ModelOptions(demo=True, quantized=bits)
    resolved = resolve(opts)
    assert resolved.quantize_runtime == (bits if "->" in variant else None)
    messages = []
    model, cfg = load_lm(resolved, progress=messages.append)
    proj = model.transformer.layers[0].self_attn.in_proj
    if bits is None:
        assert type(proj) is nn.Linear and proj.weight.dtype == mx.bfloat16
    else:
        assert isinstance(proj, nn.QuantizedLinear)
        assert (proj.bits, proj.group_size) == (bits, {4: 32, 8: 64}[bits])
    gen = make_gen(model, max_steps=20)
    audio = []
    for step in range(6):
        codes = mx.array([[(step * 37 + k) % 2048 for k in range(8)]], dtype=mx.int32)
        # moshi_mlx 0.3.0: step() returns (text_tokens, transformer_out), despite its
        # annotation; local.py's `gen.step(x)[0].item()` picks the (1, 1) text tokens.
        text = gen.step(codes)[0]
        assert text.shape == (1, 1) and 0 <= text.item() < cfg.text_out_vocab_size
        audio.append(gen.last_audio_tokens())
    delay = max(cfg.audio_delays)
    assert all(a is None for a in audio[:delay])
    for a in audio[delay:]:
        assert a is not None and a.shape == (1, 8)
        assert int(a.min().item()) >= 0 and int(a.max().item()) < 2048


def test_strict_loading_names_a_missing_tensor(demo_files, tmp_path):
    import mlx.core as mx

    from engine.model.load import load_lm

    weights = mx.load(str(demo_files.moshi_bf16))
    victim = "depformer.slices.3.linear_out.weight"
    del weights[victim]
    path = tmp_path / "model.safetensors"
    mx.save_safetensors(str(path), weights)
    with pytest.raises(ModelLoadError) as e:
        load_lm(_resolved(demo_files, path))
    msg = str(e.value)
    assert msg == f"moshi weights {path} do not match the model: missing tensor '{victim}'"
    assert e.value.exit_code == 2


def test_wrong_shapes_are_named(demo_files):
    from engine.model.load import load_lm

    cfg = json.loads(demo_files.lm_config.read_text())
    cfg["text_card"] = 999
    pattern = (
        r"tensor '\S+' has shape \[1001, \d+\], the model expects \[1000, \d+\]"
        r" \(and 2 more\)$"
    )
    with pytest.raises(ModelLoadError, match=pattern):
        load_lm(_resolved(demo_files, demo_files.moshi_bf16, lm_config=cfg))


def test_default_7b_config_against_tiny_weights_hints_at_lm_config(demo_files):
    # Only the header is compared: the 7B model is built lazily, never materialised.
    from engine.model.load import load_lm

    with pytest.raises(ModelLoadError, match="pass --lm-config"):
        load_lm(_resolved(demo_files, demo_files.moshi_q4, lm_config=None))


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_broken_safetensors_is_a_load_error(demo_files, tmp_path, kind):
    from engine.model.load import load_lm

    path = tmp_path / "model.q4.safetensors"
    data = demo_files.moshi_q4.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"hello world" * 100,
                      "empty": b""}[kind])
    with pytest.raises(ModelLoadError) as e:
        load_lm(_resolved(demo_files, path))
    msg = str(e.value)
    assert msg.startswith(f"moshi weights {path}: ") and "\n" not in msg
    assert ("truncated" if kind == "truncated" else "not a safetensors file") in msg


def test_garbage_tokenizer_is_a_load_error(demo_files, tmp_path):
    from engine.model.load import load_text_tokenizer

    bad = tmp_path / "tokenizer_spm_32k_3.model"
    bad.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(ModelLoadError, match=f"^not a sentencepiece model: {bad}$"):
        load_text_tokenizer(bad)
    with pytest.raises(ModelLoadError, match="has 1000 pieces but the model emits 32000"):
        load_text_tokenizer(demo_files.tokenizer, text_card=32000)


def test_check_mimi_rejects_other_files(demo_files, tmp_path):
    from engine.model.load import check_mimi

    with pytest.raises(ModelLoadError, match="are not a Mimi codec: no encoder tensors"):
        check_mimi(demo_files.moshi_bf16)
    with pytest.raises(ModelLoadError, match="mimi weights not found"):
        check_mimi(tmp_path / "absent.safetensors")
    cut = tmp_path / "mimi.safetensors"
    with open(demo_files.mimi, "rb") as src:
        cut.write_bytes(src.read(1 << 20))
    with pytest.raises(ModelLoadError, match="truncated"):
        check_mimi(cut)


def test_safetensors_header_of_demo_weights(demo_files):
    bf16 = read_safetensors_header(demo_files.moshi_bf16)
    q4 = read_safetensors_header(demo_files.moshi_q4)
    assert not bf16.is_quantized and bf16.float_kind == "bf16"
    assert q4.is_quantized
    assert q4.tensors["text_linear.weight"]["dtype"] == "U32"
