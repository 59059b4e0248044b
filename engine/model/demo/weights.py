"""Random weight files: an LM in moshi_mlx's names, Mimi in PyTorch's (as Kyutai ships it)
streamed into safetensors, and MLX's global random key kept around them."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Iterable, Iterator

# Group size per bit width, as Kyutai quantizes (and local.py expects).
QUANT_GROUP_SIZE = {4: 32, 8: 64}


def write_random_lm(config: dict, seed: int, bf16_path: Path,
                    quantized: Iterable[tuple[int, Path]] = ()) -> list[Path]:
    """A random LM of `config` (Kyutai's config.json format), moshi_mlx's initialisers drawing
    from MLX's generator seeded with `seed`: its bf16 weights at `bf16_path`, then for each
    (bits, path) of `quantized` that model quantized (group size QUANT_GROUP_SIZE[bits]).
    The caller's random stream is left as it was.  Returns the paths written."""
    import mlx.core as mx
    import mlx.nn as nn
    from moshi_mlx import models

    cfg = models.LmConfig.from_config_dict(config)
    saved_key = save_random_key()  # don't disturb the caller's random stream
    try:
        mx.random.seed(seed)
        model = models.Lm(cfg)
        model.set_dtype(mx.bfloat16)
        mx.eval(model.parameters())
        model.save_weights(str(bf16_path))
        paths = [bf16_path]
        for bits, path in quantized:
            qmodel = models.Lm(cfg)
            qmodel.set_dtype(mx.bfloat16)
            qmodel.load_weights(str(bf16_path), strict=True)
            nn.quantize(qmodel, group_size=QUANT_GROUP_SIZE[bits], bits=bits)
            mx.eval(qmodel.parameters())
            qmodel.save_weights(str(path))
            paths.append(path)
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


def write_mimi(path: Path, seed: int, num_codebooks: int = 32) -> None:
    """Full-size Mimi with random weights, f32, streamed tensor by tensor (~2 s, 385 MB)."""
    import numpy as np

    specs = mimi_tensor_specs(num_codebooks)
    fan_in = {n: math.prod(s[1:]) for n, s in specs if n.endswith(".weight") and len(s) > 1}
    rng = np.random.Generator(np.random.PCG64(seed))

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

