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

import contextlib
import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import platformdirs

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


# Group size per bit width, as Kyutai quantizes (and local.py expects).
QUANT_GROUP_SIZE = {4: 32, 8: 64}
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
    with _lock(root.parent / f".{root.name}.lock", progress):
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
    with _lock(root.parent / f".{root.name}.lock", progress):
        if files.lm_config.is_file() and files.model.is_file():
            return files
        from engine.model.fullsize import build_lm

        _say(progress, "demo Hibiki: generating tiny random weights")
        tmp = _new_dir(root, "hibiki")
        try:
            build_lm(DEMO_HIBIKI_CONFIG, "bf16", seed=HIBIKI_SEED, save=tmp / MOSHI_BF16_NAME)
            _atomic_write_text(tmp / CONFIG_NAME, json.dumps(DEMO_HIBIKI_CONFIG, indent=2))
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
    _atomic_write_text(root / MANIFEST_NAME, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _describe(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _lock(path: Path, progress: Progress | None) -> Iterator[None]:
    """An exclusive lock on `path`, released by the OS if the process dies."""
    with open(path, "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt
            import time

            fh.seek(0)
            waited = False
            while True:
                try:
                    msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    if not waited:
                        _say(progress, "waiting for another process generating the demo model")
                        waited = True
                    time.sleep(0.2)
            try:
                yield
            finally:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _say(progress, "waiting for another process generating the demo model")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _cleanup_stale(root: Path) -> None:
    """Remove leftovers of interrupted generations (we hold the lock, so none is running)."""
    for pattern in (f".{root.name}.tmp-*", f".{root.name}.old-*"):
        for path in root.parent.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _regenerate(root: Path, damaged: set[str], progress: Progress | None) -> None:
    parts = [part for part, names in PARTS.items() if damaged.intersection(names)]
    manifest = _read_manifest(root)
    fresh = manifest is None or not root.is_dir()
    tmp = _new_dir(root, "tmp")
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
                old = _new_dir(root, "old")
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


def _new_dir(root: Path, kind: str) -> Path:
    """A fresh sibling of `root` (made with the umask's permissions, unlike mkdtemp)."""
    path = root.parent / f".{root.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


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
            written.extend(_write_lm(dest))
        elif part == "mimi":
            _say(progress, "demo: Mimi codec with random weights (385 MB)")
            path = dest / MIMI_NAME
            _write_mimi(path)
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


def _write_lm(dest: Path) -> list[Path]:
    import mlx.core as mx
    import mlx.nn as nn
    from moshi_mlx import models

    cfg = models.LmConfig.from_config_dict(DEMO_LM_CONFIG)
    bf16_path = dest / MOSHI_BF16_NAME
    saved_key = save_random_key()  # don't disturb the caller's random stream
    try:
        mx.random.seed(LM_SEED)
        model = models.Lm(cfg)
        model.set_dtype(mx.bfloat16)
        mx.eval(model.parameters())
        model.save_weights(str(bf16_path))
        paths = [bf16_path]
        for bits, name in ((8, MOSHI_Q8_NAME), (4, MOSHI_Q4_NAME)):
            qmodel = models.Lm(cfg)
            qmodel.set_dtype(mx.bfloat16)
            qmodel.load_weights(str(bf16_path), strict=True)
            nn.quantize(qmodel, group_size=QUANT_GROUP_SIZE[bits], bits=bits)
            mx.eval(qmodel.parameters())
            qmodel.save_weights(str(dest / name))
            paths.append(dest / name)
    finally:
        restore_random_key(saved_key)
    return paths


_ENCODER_INDEX = {"init_conv1d": 0, "final_conv1d": 14}
_DECODER_INDEX = {"init_conv1d": 0, "final_conv1d": 14}


def save_random_key() -> tuple[int, int]:
    """MLX's global random key as two uint32 (reading `mx.random.state[0]` works on every
    MLX; assigning to it is a TypeError on mlx >= 0.32)."""
    import mlx.core as mx
    import numpy as np

    hi, lo = (int(x) for x in np.array(mx.random.state[0]).reshape(-1).tolist())
    return hi, lo


def restore_random_key(key: tuple[int, int]) -> None:
    """Set the global random key back: `mx.random.seed(s)` makes the key
    (s >> 32, s & 0xffffffff), so any saved key is one seed away."""
    import mlx.core as mx

    hi, lo = key
    mx.random.seed((hi << 32) | lo)


def mimi_torch_name(mlx_name: str) -> str:
    """Invert the renaming of `moshi_mlx.models.mimi.Mimi.load_pytorch_weights`."""
    name = mlx_name
    m = re.match(r"^(encoder|decoder)\.(.*)$", name)
    if m:
        side, rest = m.groups()
        fixed = _ENCODER_INDEX if side == "encoder" else _DECODER_INDEX
        head, _, tail = rest.partition(".")
        if head in fixed:
            index = fixed[head]
        else:
            lm = re.match(r"^layers\.(\d+)\.(residuals\.0|downsample|upsample)\.(.*)$", rest)
            if lm is None:
                raise ValueError(f"unexpected Mimi parameter {mlx_name}")
            layer, kind, tail = int(lm.group(1)), lm.group(2), lm.group(3)
            if side == "encoder":  # 1 resblock, 2 elu, 3 downsample conv, ...
                index = 3 * layer + (1 if kind == "residuals.0" else 3)
            else:  # 2 upsample convtr, 3 resblock, ...
                index = 3 * layer + (2 if kind == "upsample" else 3)
        name = f"{side}.model.{index}.{tail}"
    # In PyTorch the resblock is [elu, conv, elu, conv].
    name = re.sub(r"\.block\.(\d+)\.", lambda b: f".block.{2 * int(b.group(1)) + 1}.", name)
    name = name.replace(".gating.linear1.", ".linear1.").replace(".gating.linear2.", ".linear2.")
    name = re.sub(r"\.self_attn\.in_proj\.weight$", ".self_attn.in_proj_weight", name)
    name = name.replace(".codebook.", "._codebook.")
    name = re.sub(r"\.initialized$", "._initialized", name)
    return name


def mimi_torch_shape(mlx_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Invert the layout changes of `Mimi.load_pytorch_weights` (MLX conv layouts)."""
    if mlx_name.endswith((".conv.weight", ".output_proj.weight", ".input_proj.weight")):
        return shape[:-2] + (shape[-1], shape[-2])  # (out, k, in) -> (out, in, k)
    if mlx_name.endswith(".convtr.weight"):
        a, b, c = shape  # (out/groups, k, in) -> (in, out/groups, k)
        return (c, a, b)
    return shape


def mimi_tensor_specs(num_codebooks: int = 32) -> list[tuple[str, tuple[int, ...]]]:
    """(PyTorch name, PyTorch shape) of every Mimi tensor, sorted by name."""
    from mlx.utils import tree_flatten
    from moshi_mlx.models.mimi import Mimi, mimi_202407

    saved_key = save_random_key()  # building the module draws (lazy) random initial values
    try:
        model = Mimi(mimi_202407(num_codebooks))  # parameters stay lazy: no compute here
    finally:
        restore_random_key(saved_key)
    specs = [
        (mimi_torch_name(name), mimi_torch_shape(name, tuple(arr.shape)))
        for name, arr in tree_flatten(model.parameters())
    ]
    return sorted(specs)


def _mimi_init(name: str, shape: tuple[int, ...], fan_in: dict[str, int], rng) -> "np.ndarray":
    import numpy as np

    if name.endswith("._initialized") or name.endswith(".cluster_usage"):
        return np.ones(shape, dtype=np.float32)
    if name.endswith(".embedding_sum"):
        emb = rng.standard_normal(shape, dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
        return emb
    if re.search(r"\.layer_scale_\d\.scale$", name):
        return np.full(shape, 0.01, dtype=np.float32)  # larger values make the decoder blow up
    if re.search(r"\.norm\d\.weight$", name):
        return np.ones(shape, dtype=np.float32)
    if re.search(r"\.norm\d\.bias$", name):
        return np.zeros(shape, dtype=np.float32)
    if name.endswith(".bias"):
        fan = fan_in[name[: -len("bias")] + "weight"]
    else:
        fan = math.prod(shape[1:])  # Linear (out, in); conv (out, in/groups, k); convtr same
    bound = 1.0 / math.sqrt(fan)
    out = rng.random(shape, dtype=np.float32)
    out *= 2 * bound
    out -= bound
    return out


def _write_mimi(path: Path, num_codebooks: int = 32) -> None:
    """Full-size Mimi with random weights, f32, streamed tensor by tensor (~2 s, 385 MB)."""
    import numpy as np

    specs = mimi_tensor_specs(num_codebooks)
    fan_in = {n: math.prod(s[1:]) for n, s in specs if n.endswith(".weight") and len(s) > 1}
    rng = np.random.Generator(np.random.PCG64(MIMI_SEED))

    def tensors() -> Iterator[np.ndarray]:
        for name, shape in specs:
            yield _mimi_init(name, shape, fan_in, rng)

    write_safetensors(path, [(n, s, "F32") for n, s in specs], tensors(), {"format": "pt"})


_DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "U8": 1, "I64": 8}


def write_safetensors(
    path: Path,
    specs: list[tuple[str, tuple[int, ...], str]],
    arrays: Iterable["np.ndarray"],
    metadata: dict[str, str] | None = None,
) -> None:
    """Stream tensors (given in `specs` order) into a safetensors file.

    The header (names, dtypes, shapes, offsets) is known from `specs`, so each tensor is
    written as soon as it is made and never all held in memory.
    """
    import numpy as np

    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, shape, dtype in specs:
        nbytes = math.prod(shape) * _DTYPE_SIZES[dtype]
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for (name, shape, dtype), arr in zip(specs, arrays, strict=True):
            if tuple(arr.shape) != tuple(shape):
                raise ValueError(f"{name}: shape {arr.shape} != {shape}")
            data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            fh.write(memoryview(data.reshape(-1).view("u1")))

