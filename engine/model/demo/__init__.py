"""The demo model: a tiny random Moshi generated locally, cached as Kyutai's file set.

`ensure_demo()` makes (once) and returns a directory holding exactly the files of a Kyutai
HF repo: `config.json`, `model.safetensors` (bf16), `model.q8.safetensors`,
`model.q4.safetensors`, the Mimi codec `tokenizer-e351c8d8-checkpoint125.safetensors` and the
text tokenizer `tokenizer_spm_32k_3.model`, so the demo takes the same loading path as real
weights. The LM is tiny (~18M parameters); Mimi is full size with random weights, because its
frame rate and sizes are what the latency figures are about.

Generation is deterministic (fixed seeds: two runs give byte-identical files), atomic (built
in a temporary directory, then renamed) and serialised by a lock file. A `manifest.json`
records each file's size and sha256; a missing or damaged file is regenerated on the next call.

MLX and moshi_mlx are imported only while generating, so checking a ready cache is cheap.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import platformdirs

from engine.model.demo.cache import atomic_write_text, file_sha256, lock, new_dir
from engine.model.demo.weights import write_mimi, write_random_lm

Progress = Callable[[str], None]
DEMO_DIR_NAME = "demo-v1"
CACHE_ENV = "MOSHI_TUI_CACHE"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
CONFIG_NAME = "config.json"
MOSHI_BF16_NAME = "model.safetensors"
MOSHI_Q8_NAME = "model.q8.safetensors"
MOSHI_Q4_NAME = "model.q4.safetensors"
MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOKENIZER_NAME = "tokenizer_spm_32k_3.model"

LM_SEED = 20240917
MIMI_SEED = 12500
SPM_SEED = 1000


# Kyutai's HF config.json format (read by moshi_mlx LmConfig.from_config_dict), with the
# structure of moshiko shrunk: 256-d, 2 layers, 4 heads; depformer 128-d, 2 layers.
DEMO_LM_CONFIG: dict = {
    "model_type": "moshi",
    "dim": 256,
    "text_card": 1000,
    "existing_text_padding_id": 3,
    "n_q": 16,
    "dep_q": 8,
    "card": 2048,
    "num_heads": 4,
    "num_layers": 2,
    "hidden_scale": 4.125,
    "causal": True,
    "layer_scale": None,
    "context": 3000,
    "max_period": 10000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "depformer_dim": 128,
    "depformer_dim_feedforward": 576,
    "depformer_num_heads": 4,
    "depformer_num_layers": 2,
    "depformer_layer_scale": None,
    "depformer_multi_linear": True,
    "depformer_context": 8,
    "depformer_max_period": 10000,
    "depformer_gating": "silu",
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "delays": [0] + ([0] + [1] * 7) * 2,  # text delay first, then 16 audio codebooks
    "conv_kernel_size": 3,
    "moshi_name": MOSHI_BF16_NAME,
    "mimi_name": MIMI_NAME,
    "tokenizer_name": TOKENIZER_NAME,
}


# A tiny random Hibiki-shaped model (Kyutai's live speech translation): the demo LM's size,
# Hibiki's layout -- 16 codebooks each way (32 in all, the model generates 16), their delays,
# and a description conditioner as Kyutai's Hibiki configs have -- through the same loading
# path as the real repos.  It shares the demo's Mimi and text tokenizer.
DEMO_HIBIKI_DIR_NAME = "demo-hibiki-v1"
DEMO_HIBIKI_CONFIG: dict = {
    **DEMO_LM_CONFIG,
    "model_type": "hibiki",
    "n_q": 32,
    "dep_q": 16,
    "delays": [0] + ([0] + [2] * 15) * 2,  # text delay first, then 32 audio codebooks
    "conditioners": {"description": {"type": "lut", "lut": {
        "n_bins": 31, "dim": 16, "tokenizer": "noop",
        "possible_values": ["very_bad", "bad", "neutral", "good", "very_good"]}}},
}
HIBIKI_SEED = 20250206


# The parts that are generated together; each lists the files it writes.
PARTS: dict[str, tuple[str, ...]] = {
    "config": (CONFIG_NAME,),
    "tokenizer": (TOKENIZER_NAME,),
    "lm": (MOSHI_BF16_NAME, MOSHI_Q8_NAME, MOSHI_Q4_NAME),
    "mimi": (MIMI_NAME,),
}


ALL_FILES: tuple[str, ...] = tuple(name for names in PARTS.values() for name in names)


@dataclass(frozen=True)
class DemoFiles:
    root: Path
    lm_config: Path
    moshi_bf16: Path
    moshi_q8: Path
    moshi_q4: Path
    mimi: Path
    tokenizer: Path

    @classmethod
    def at(cls, root: Path) -> "DemoFiles":
        root = Path(root)
        return cls(
            root=root,
            lm_config=root / CONFIG_NAME,
            moshi_bf16=root / MOSHI_BF16_NAME,
            moshi_q8=root / MOSHI_Q8_NAME,
            moshi_q4=root / MOSHI_Q4_NAME,
            mimi=root / MIMI_NAME,
            tokenizer=root / TOKENIZER_NAME,
        )

    def moshi(self, quantized: int | None) -> Path:
        """The LM weights for `-q 4`, `-q 8` or bf16 (None)."""
        if quantized is None:
            return self.moshi_bf16
        if quantized == 8:
            return self.moshi_q8
        if quantized == 4:
            return self.moshi_q4
        raise ValueError(f"unsupported quantization: {quantized} bits (use 4 or 8)")


def default_cache_dir() -> Path:
    """`$MOSHI_TUI_CACHE/demo-v1`, else the platform's user cache dir for moshi-tui."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path(platformdirs.user_cache_dir("moshi-tui"))
    return base / DEMO_DIR_NAME


def ensure_demo(
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    *,
    verify: bool = False,
) -> DemoFiles:
    """Return the demo files, generating (or repairing) them first if needed.

    Files are checked against the manifest by size (cheap); `verify=True` also compares
    sha256 digests (reads ~400 MB).
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = root.expanduser().absolute()  # the paths travel to the spawned server process
    files = DemoFiles.at(root)
    if not _damaged(root, verify):
        return files
    root.parent.mkdir(parents=True, exist_ok=True)
    with lock(root.parent / f".{root.name}.lock", progress):
        damaged = _damaged(root, verify)  # another process may have finished meanwhile
        if damaged:
            _cleanup_stale(root)
            _regenerate(root, damaged, progress)
    return files


@dataclass(frozen=True)
class HibikiDemoFiles:
    root: Path
    lm_config: Path
    model: Path
    mimi: Path  # the demo's
    tokenizer: Path  # the demo's


def ensure_demo_hibiki(progress: Progress | None = None) -> HibikiDemoFiles:
    """The demo Hibiki (see DEMO_HIBIKI_CONFIG), generated once beside the demo."""
    demo = ensure_demo(progress=progress)
    root = (demo.root.parent / DEMO_HIBIKI_DIR_NAME).absolute()
    files = HibikiDemoFiles(root, root / CONFIG_NAME, root / MOSHI_BF16_NAME, demo.mimi,
                            demo.tokenizer)
    if files.lm_config.is_file() and files.model.is_file():
        return files
    with lock(root.parent / f".{root.name}.lock", progress):
        if files.lm_config.is_file() and files.model.is_file():
            return files
        _say(progress, "demo Hibiki: generating tiny random weights")
        tmp = new_dir(root, "hibiki")
        try:
            write_random_lm(DEMO_HIBIKI_CONFIG, HIBIKI_SEED, tmp / MOSHI_BF16_NAME)
            atomic_write_text(tmp / CONFIG_NAME, json.dumps(DEMO_HIBIKI_CONFIG, indent=2))
            shutil.rmtree(root, ignore_errors=True)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return files


def _damaged(root: Path, verify: bool) -> set[str]:
    """Names of the files that are missing or do not match the manifest."""
    manifest = _read_manifest(root)
    if manifest is None:
        return set(ALL_FILES)
    bad = set()
    for name in ALL_FILES:
        entry = manifest[name]
        path = root / name
        try:
            size = path.stat().st_size
        except OSError:
            bad.add(name)
            continue
        if size != entry["size"] or (verify and file_sha256(path) != entry["sha256"]):
            bad.add(name)
    return bad


def _read_manifest(root: Path) -> dict[str, dict] | None:
    try:
        data = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = data["files"]
        if data.get("format") != MANIFEST_FORMAT or set(files) != set(ALL_FILES):
            return None
        for entry in files.values():
            if not isinstance(entry["size"], int) or not isinstance(entry["sha256"], str):
                return None
        return files
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_manifest(root: Path, entries: dict[str, dict]) -> None:
    data = {"format": MANIFEST_FORMAT, "files": {k: entries[k] for k in sorted(entries)}}
    atomic_write_text(root / MANIFEST_NAME, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _describe(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def _cleanup_stale(root: Path) -> None:
    """Remove leftovers of interrupted generations (we hold the lock, so none is running)."""
    for pattern in (f".{root.name}.tmp-*", f".{root.name}.old-*"):
        for path in root.parent.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _regenerate(root: Path, damaged: set[str], progress: Progress | None) -> None:
    parts = [part for part, names in PARTS.items() if damaged.intersection(names)]
    manifest = _read_manifest(root)
    fresh = manifest is None or not root.is_dir()
    tmp = new_dir(root, "tmp")
    try:
        if fresh:
            _say(progress, f"generating the demo model in {root} (one time, about 440 MB)")
        else:
            _say(progress, f"repairing the demo model in {root}: {', '.join(sorted(damaged))}")
        written = write_demo_files(tmp, parts, progress)
        entries = {path.name: _describe(path) for path in written}
        if fresh:
            _write_manifest(tmp, entries)
            if root.exists():  # a broken directory without a valid manifest
                old = new_dir(root, "old")
                os.replace(root, old / "x")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, root)
        else:
            assert manifest is not None
            for path in written:
                os.replace(path, root / path.name)
            manifest.update(entries)
            _write_manifest(root, manifest)
        _say(progress, "demo model ready")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_demo_files(
    dest: Path,
    parts: Iterable[str] = tuple(PARTS),
    progress: Progress | None = None,
) -> list[Path]:
    """Write the files of the given parts into `dest` (deterministic); return their paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for part in parts:
        if part == "config":
            path = dest / CONFIG_NAME
            text = json.dumps(DEMO_LM_CONFIG, indent=2, sort_keys=True) + "\n"
            path.write_text(text, encoding="utf-8", newline="\n")
            written.append(path)
        elif part == "tokenizer":
            _say(progress, "demo: training the text tokenizer (1000 pieces)")
            path = dest / TOKENIZER_NAME
            path.write_bytes(build_text_tokenizer())
            written.append(path)
        elif part == "lm":
            _say(progress, "demo: language model (bf16, q8, q4)")
            written.extend(write_random_lm(DEMO_LM_CONFIG, LM_SEED, dest / MOSHI_BF16_NAME,
                                           ((8, dest / MOSHI_Q8_NAME), (4, dest / MOSHI_Q4_NAME))))
        elif part == "mimi":
            _say(progress, "demo: Mimi codec with random weights (385 MB)")
            path = dest / MIMI_NAME
            write_mimi(path, MIMI_SEED)
            written.append(path)
        else:
            raise ValueError(f"unknown demo part {part!r}")
    return written


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _corpus() -> list[str]:
    """Conversational English the demo's text tokenizer is trained on (corpus.txt beside this)."""
    text = (Path(__file__).with_name("corpus.txt")).read_text(encoding="utf-8")
    return text.strip().splitlines()


def build_text_tokenizer(vocab_size: int | None = None) -> bytes:
    """A sentencepiece unigram model trained on the demo corpus; Moshi's special ids
    (0 unk, 1 bos, 2 eos, 3 pad) so `id_to_piece` covers every text token the LM emits."""
    import sentencepiece as spm

    vocab_size = vocab_size or DEMO_LM_CONFIG["text_card"]
    spm.set_random_generator_seed(SPM_SEED)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        num_threads=1,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        hard_vocab_limit=True,
        minloglevel=2,
    )
    return out.getvalue()
