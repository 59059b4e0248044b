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


# ---------------------------------------------------------------------------------------
# manifest and checks


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


# ---------------------------------------------------------------------------------------
# generation: atomic, under a lock


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


# ---------------------------------------------------------------------------------------
# text tokenizer


def build_text_tokenizer(vocab_size: int | None = None) -> bytes:
    """A sentencepiece unigram model trained on the embedded corpus; Moshi's special ids
    (0 unk, 1 bos, 2 eos, 3 pad) so `id_to_piece` covers every text token the LM emits."""
    import sentencepiece as spm

    vocab_size = vocab_size or DEMO_LM_CONFIG["text_card"]
    spm.set_random_generator_seed(SPM_SEED)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.strip().splitlines()),
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


# ---------------------------------------------------------------------------------------
# language model


def _write_lm(dest: Path) -> list[Path]:
    import mlx.core as mx
    import mlx.nn as nn
    from moshi_mlx import models

    cfg = models.LmConfig.from_config_dict(DEMO_LM_CONFIG)
    bf16_path = dest / MOSHI_BF16_NAME
    saved_state = mx.random.state[0]  # don't disturb the caller's random stream
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
        mx.random.state[0] = saved_state
    return paths


# ---------------------------------------------------------------------------------------
# Mimi: PyTorch names and layouts (what rustymimi and Mimi.load_pytorch_weights read)

_ENCODER_INDEX = {"init_conv1d": 0, "final_conv1d": 14}
_DECODER_INDEX = {"init_conv1d": 0, "final_conv1d": 14}


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

    model = Mimi(mimi_202407(num_codebooks))  # parameters stay lazy: no compute here
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


# ---------------------------------------------------------------------------------------
# corpus for the text tokenizer: plain conversational English, one sentence per line

CORPUS = """
Hello, how are you doing today?
I'm doing well, thank you for asking.
What would you like to talk about?
Tell me something interesting about the ocean.
The ocean covers more than seventy percent of the planet.
Whales can hear each other across hundreds of kilometers of water.
Did you sleep well last night?
Not really, the neighbors were having a party until three in the morning.
That sounds exhausting; maybe you should take a nap this afternoon.
I think I will make some coffee instead.
Do you prefer tea or coffee?
I usually drink green tea in the morning and coffee after lunch.
The weather is lovely today, isn't it?
It was raining all week, so the sunshine feels wonderful.
Let's go for a walk in the park before it gets dark.
Remember to bring an umbrella, the forecast says showers later.
My favourite season is autumn, when the leaves turn red and gold.
In winter the lake freezes and children skate on the ice.
Spring brings flowers, birds, and a lot of pollen.
Summer evenings are long and warm near the sea.
Could you recommend a good book to read?
I just finished a novel about a lighthouse keeper on a remote island.
Science fiction helps me imagine how the future might look.
History books remind us that people have always faced hard choices.
She reads poetry aloud every Sunday morning.
The library downtown opens at nine and closes at eight.
What kind of music do you enjoy?
I listen to jazz while I cook dinner.
He plays the piano, the guitar, and a little bit of the violin.
The concert last Friday was absolutely fantastic.
The drummer kept a steady rhythm for almost two hours.
Classical music can be calm one moment and dramatic the next.
Have you ever travelled abroad?
Last year we visited Japan and climbed a mountain near Kyoto.
The train from Paris to Marseille takes about three hours.
Our flight was delayed, so we waited at the airport all evening.
I always pack too many clothes and forget my toothbrush.
The hotel room had a view of the harbour and the old castle.
Maps on the phone are useful, but paper maps never run out of battery.
Where did you grow up?
I grew up in a small village surrounded by farms and forests.
My grandmother taught me how to bake bread and make jam.
We used to ride our bicycles to school in every kind of weather.
The city has changed a lot since I was a child.
New buildings appear every year, and the old market is gone.
How does a computer understand speech?
It turns sound into numbers, then looks for patterns in those numbers.
A microphone measures tiny changes in air pressure.
The sound is split into short frames, each lasting a few milliseconds.
Neural networks learn from examples rather than from fixed rules.
A language model predicts the next word from the words before it.
Speaking and listening at the same time is surprisingly difficult for machines.
People interrupt each other, laugh, and say things like hmm and okay.
Latency matters: a pause of half a second already feels awkward.
The quick brown fox jumps over the lazy dog.
Please speak a little more slowly, I missed the last part.
Sorry, could you repeat that?
Of course, no problem at all.
I'm not sure I understand what you mean.
Let me think about that for a second.
That's a great question, and the honest answer is that nobody knows yet.
Actually, I changed my mind about it.
You're right, I hadn't considered that.
Well, it depends on what you want to achieve.
Maybe we can try again tomorrow.
Thanks a lot, that was really helpful.
You're welcome, have a nice evening.
Goodbye, and see you soon!
What did you have for breakfast?
Just some toast with butter and a boiled egg.
I love cooking pasta with tomatoes, garlic, and fresh basil.
The soup needs more salt and a little pepper.
Chocolate cake is my weakness.
We ordered pizza because nobody wanted to cook.
Vegetables from the garden taste much better than the ones from the store.
The restaurant on the corner serves excellent noodles.
My brother is learning to speak Spanish.
Learning a new language takes patience and a lot of practice.
Every morning she practises twenty new words.
Grammar can be confusing, but conversation is fun.
The teacher explained the lesson with drawings on the board.
Students asked questions until the bell rang.
Mathematics is the language of patterns.
Seven times eight is fifty-six.
The sum of the angles of a triangle is one hundred and eighty degrees.
Prime numbers have no divisors other than one and themselves.
Water boils at one hundred degrees Celsius at sea level.
Light from the sun takes about eight minutes to reach the earth.
The moon has no atmosphere, so the sky there is always black.
Plants use sunlight to turn water and carbon dioxide into sugar.
Bees are essential for pollinating many of the crops we eat.
Volcanoes can create new islands in the middle of the ocean.
Earthquakes happen when plates of rock suddenly slip.
The human brain contains billions of neurons.
Exercise improves both the body and the mind.
Try to drink enough water during the day.
A good night's sleep makes everything easier.
I go running three times a week along the river.
Yoga helps me stretch after sitting at the desk all day.
Our football team won the match in the last minute.
Tennis requires quick reflexes and a lot of stamina.
The marathon route passes through the old town.
Do you have any pets?
We have a cat named Pepper who sleeps most of the day.
Dogs need long walks, even when it's cold outside.
The parrot can say hello and whistle a short melody.
Horses were once the fastest way to travel over land.
I'm working on a project about renewable energy.
Solar panels on the roof produce electricity all summer.
Wind turbines turn slowly but generate a lot of power.
Batteries store energy for the hours when the sun is down.
Electric cars are becoming cheaper every year.
The bus was crowded, so I decided to walk home.
Traffic in the city center is terrible on Monday mornings.
Bicycles are the simplest way to get around town.
The bridge was built more than two hundred years ago.
Engineers checked every bolt before opening it again.
What time is it?
It's a quarter past four.
The meeting starts at half past ten, don't be late.
I'll call you back in five minutes.
My phone battery is almost empty.
Can you send me the address by message?
The package should arrive on Thursday.
I forgot my keys at the office again.
Someone is knocking at the door.
Please close the window, it's getting cold.
Turn off the lights when you leave the room.
The garden needs water after such a hot day.
We planted apple trees, roses, and a row of carrots.
The tomatoes are finally turning red.
Our neighbours have chickens that lay fresh eggs.
Birthday parties are more fun with music and games.
We sang happy birthday and cut the cake.
The children built a snowman with a carrot nose.
Grandpa tells the same funny story every holiday.
Families gather around the table to share a meal.
Friendship means being there when things get hard.
Honesty is sometimes difficult but always worth it.
Kindness costs nothing and changes a lot.
Everyone makes mistakes, and that's how we learn.
Curiosity is the beginning of every discovery.
The museum has a new exhibition about ancient Egypt.
Pyramids were built with millions of stone blocks.
Archaeologists found pottery, coins, and tools near the river.
The painting shows a stormy sea under a dark sky.
Artists often work for years before anyone notices them.
Photography captures a single moment forever.
The film was long, but the ending surprised everyone.
I prefer comedies to horror movies.
The actors rehearsed every scene dozens of times.
Would you like to play a game of chess?
The knight moves in the shape of the letter L.
Cards, dice, and board games make rainy days pass quickly.
Puzzles keep the mind sharp.
Let's count from one to ten: one, two, three, four, five, six, seven, eight, nine, ten.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, and Sunday.
January is cold, July is hot, and October is colourful.
The store is open from Monday to Saturday.
Prices went up again this month.
Saving a little money every week adds up over time.
The bank closes early on Fridays.
Farmers wake up before sunrise to feed the animals.
Fishermen leave the harbour when the tide is high.
The baker starts work at four in the morning.
Doctors and nurses work long shifts at the hospital.
Firefighters rescued a kitten from the tall oak tree.
The pilot announced that we would land in twenty minutes.
The astronaut described the earth as a small blue marble.
Scientists measure the temperature of the oceans with floating robots.
Rivers carry sand and stones all the way to the sea.
Deserts can be freezing at night.
Snow covered the mountains until late in May.
Thunder rolled across the valley during the storm.
A rainbow appeared after the rain stopped.
Fog made it hard to see the road.
The stars are bright tonight because there are no clouds.
I wonder what life was like a thousand years ago.
Imagine a city where every roof is a garden.
If you could fly, where would you go first?
I would visit the northern lights in Norway.
Dreams are strange: sometimes they feel completely real.
Time flies when you're having fun.
Better late than never.
Practice makes perfect, or at least better.
Actions speak louder than words.
The early bird catches the worm, but the second mouse gets the cheese.
Honestly, I think you're doing a great job.
Don't worry, everything will be fine.
Take a deep breath and start again.
It was nice talking to you.
Right, so where were we?
Yes, exactly, that's what I was trying to say.
No, I don't think that's correct.
Hmm, interesting, tell me more.
Okay, sounds good to me.
Wait a moment, I'm looking for it.
Here it is, I found it under the sofa.
The children laughed at the clown's enormous shoes.
A gentle breeze moved the curtains.
The old clock in the hall chimes every hour.
She whispered a secret to her best friend.
He shouted across the street to catch the bus.
They argued about politics and then agreed to disagree.
We should probably get going, it's late.
Fun fact: octopuses have three hearts and blue blood.
Another fun fact: honey never spoils.
Bananas are berries, but strawberries are not.
Penguins cannot fly, but they are excellent swimmers.
A group of crows is called a murder.
The giraffe is the tallest animal in the world.
Elephants remember places they visited decades ago.
Ants can carry many times their own weight.
Trees talk to each other through networks of fungi.
The internet connects billions of devices around the world.
Programmers fix bugs, and sometimes create new ones.
Software updates arrive at the most inconvenient moments.
Robots help build cars in large factories.
Writing clear instructions is harder than it looks.
Good design is often invisible.
Excuse me, is this seat taken?
No, please go ahead and sit down.
How much does this jacket cost?
It's on sale today for forty dollars.
Could I pay with a credit card?
The waiter brought our drinks and a basket of warm bread.
I'd like a glass of orange juice, please.
Is there a pharmacy nearby?
Go straight ahead, then turn left at the second traffic light.
The station is just around the corner, next to the bakery.
My appointment with the dentist is on Wednesday afternoon.
The doctor said I should rest and drink plenty of fluids.
I have a headache and a slightly sore throat.
Get well soon, and let me know if you need anything.
Congratulations on your new job!
Thank you, I'm nervous but also very excited.
The interview went better than I expected.
Our manager organised a small celebration in the kitchen.
The deadline was moved to next Tuesday.
I need to finish this report before the weekend.
Could you check my spelling before I send it?
The printer is jammed again, of course.
Somebody left their umbrella in the meeting room.
The elevator is out of order, so we took the stairs.
We are moving to a bigger apartment next month.
Packing boxes is the least fun part of moving.
The new flat has a balcony facing the mountains.
Our kitchen is tiny, but it has everything we need.
I painted the bedroom a pale shade of green.
The washing machine makes a strange noise when it spins.
Could you help me carry this heavy table?
Careful, the floor is still wet.
Breakfast is served between seven and ten.
The museum offers free entry on the first Sunday of each month.
Tickets for the festival sold out within an hour.
The band played their most famous song at the very end.
The audience clapped and cheered for several minutes.
A street musician was playing the accordion near the fountain.
We danced until our feet hurt.
My sister is studying medicine at the university.
Her exams are in June, so she studies every evening.
My cousin builds furniture out of recycled wood.
Our uncle owns a small bookshop by the harbour.
The twins look alike but have very different personalities.
Parents worry, children grow, and the years pass quickly.
Babies understand more words than they can say.
Teenagers often sleep late on weekends.
Old friends can pick up a conversation as if no time had passed.
I haven't seen him since we graduated.
Let's meet for lunch sometime next week.
How about Thursday at noon, at the Italian place?
Perfect, I'll book a table for two.
The soup of the day is pumpkin with ginger.
For dessert we shared a lemon tart.
Spicy food makes my eyes water.
Rice, beans, and vegetables make a cheap and healthy dinner.
Fresh fish is sold at the market every Friday.
The cheese smelled strong but tasted mild.
Please pass the salt and the olive oil.
The kettle is boiling, would you like a cup of tea?
I take my coffee black, without sugar.
Cookies are best when they are still warm.
Our dog barked at the postman again.
The cat knocked a glass off the table on purpose.
Rabbits are quiet, curious, and surprisingly fast.
The goldfish swims in circles all day long.
A squirrel buried nuts all over the garden.
Foxes sometimes visit the city at night.
Owls hunt silently in the dark.
Frogs sing loudly after a summer rain.
Butterflies taste with their feet.
The forest was quiet except for a woodpecker.
We camped beside a lake and cooked over a fire.
The tent leaked during the night, so we slept in the car.
Hiking boots should be comfortable before a long trip.
From the summit we could see three countries.
The path was steep, rocky, and covered in loose gravel.
A waterfall thundered at the end of the valley.
Sailing requires reading the wind and the waves.
The beach was crowded, but the water was clear and warm.
Don't forget the sunscreen and a hat.
The island can only be reached by ferry.
Our guide spoke four languages fluently.
Street food is the best way to discover a new city.
I bought postcards and a small wooden elephant as souvenirs.
Jet lag made me wide awake at three in the morning.
Home always feels cosy after a long journey.
The computer froze, so I restarted it.
Have you tried turning it off and on again?
My password must contain a number and a symbol.
The video call kept freezing because of the poor connection.
Please mute your microphone when you are not speaking.
I can hear an echo on the line.
Your voice is breaking up, could you move closer to the router?
The app asks for permission to use the microphone.
Headphones reduce echo and make conversations clearer.
The speaker is too loud; turn it down a little.
Recording audio at a high sample rate takes more space.
Each second of sound contains twenty-four thousand samples.
Short frames of eighty milliseconds are processed one after another.
The model listens and answers at the same time.
A small delay is normal, but a long one breaks the flow.
Measuring every step shows where the time really goes.
Is the model slow, or is it the plumbing around it?
Queues fill up when one stage cannot keep up with the others.
A steady rhythm matters more than raw speed.
Good tools make problems visible.
Numbers on a screen are easier to trust than feelings.
The experiment failed, but we learned something useful.
Science advances one careful measurement at a time.
Astronomers discovered a planet orbiting a distant star.
Telescopes on mountains avoid the haze of city lights.
Comets have long tails of dust and ice.
Mars has the tallest volcano in the solar system.
Jupiter is so large that all the other planets could fit inside it.
Saturn's rings are made of countless pieces of ice and rock.
Gravity keeps our feet on the ground and the moon in its orbit.
Magnets attract iron but not aluminium.
Electricity flows easily through copper wires.
Glass is made by melting sand at very high temperatures.
Salt dissolves in water, but oil does not.
Rust forms when iron meets oxygen and moisture.
Clouds are made of tiny droplets of water.
Hurricanes form over warm tropical oceans.
Glaciers move slowly, carving valleys over thousands of years.
Coral reefs are home to a quarter of all marine species.
Forests produce oxygen and absorb carbon.
Recycling paper saves trees, water, and energy.
Turning off unused lights is a simple way to save power.
Public transport reduces pollution in big cities.
Cities are planting more trees to keep streets cool.
The river was cleaned, and now the fish have returned.
Volunteers collected rubbish along the coast.
Small actions, repeated by many people, make a big difference.
Why is the sky blue?
Sunlight scatters in the air, and blue light scatters the most.
Why do cats purr?
Nobody is completely sure, but it often means they are content.
How far away is the moon?
About three hundred and eighty thousand kilometers.
How many people live on earth?
More than eight billion, and the number is still growing.
What is the capital of Australia?
It's Canberra, not Sydney, which surprises many people.
Who wrote Romeo and Juliet?
William Shakespeare wrote it more than four hundred years ago.
Which is heavier, a kilogram of feathers or a kilogram of iron?
They weigh exactly the same, of course.
I'm sorry, I didn't catch your name.
My name is Sam, nice to meet you.
Where are you calling from?
I'm in a quiet room at home, so the sound should be clear.
Can you hear me well?
Yes, loud and clear.
Let's start with something simple.
Tell me a short story about a dragon who was afraid of the dark.
Once upon a time, in a valley full of fireflies, lived a very shy dragon.
Every night the fireflies lit the cave so the dragon could fall asleep.
One evening the fireflies were late, and the dragon had to be brave.
He opened his mouth, breathed a tiny flame, and the darkness disappeared.
From then on, he lit the way for the fireflies whenever they got lost.
The end, and goodnight.
That was lovely, thank you.
Could you tell me a joke?
Why did the scarecrow win an award? Because he was outstanding in his field.
I told my computer a joke, but it didn't get it, it needed more bytes.
What do you call a fish without eyes? A fsh.
Very funny, tell me another one.
"""
