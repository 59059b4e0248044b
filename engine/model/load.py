"""Loading the model in the server process, with one-line errors for every bad file.

`load_lm` follows Kyutai's local.py: build the LM from its config, bf16, quantize if the
weights are pre-quantized (bits and group size read from the file), load strictly, warm up.
Before MLX sees the file its safetensors header is checked against the model's parameters,
so a missing tensor, a wrong shape or a truncated file is named instead of a stack trace.

MLX is imported inside the functions: `check_mimi` and `load_text_tokenizer` also serve the
client process, which never needs MLX.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from engine.errors import ModelLoadError, UsageError
from engine.model.lm_config import first_line, make_lm_config
from engine.model.safetensors import SafetensorsError, SafetensorsInfo, read_safetensors_header
from engine.model.source import ResolvedModel

if TYPE_CHECKING:  # pragma: no cover
    import sentencepiece
    from moshi_mlx.models import Lm, LmConfig, LmGen


Progress = Callable[[str], None]


# Group size per bit width for quantizing a bf16 file at load time (as Kyutai does).
RUNTIME_GROUP_SIZE = {4: 32, 8: 64}
KYUTAI_SEED = 299792458  # local.py seeds MLX with this before building the model
_SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)


def load_lm(
    resolved: ResolvedModel,
    dtype: str = "bf16",
    progress: Progress | None = None,
) -> tuple["Lm", "LmConfig"]:
    """Build, load (strictly) and warm up the LM. Raises ModelLoadError."""
    import mlx.core as mx
    import mlx.nn as nn
    from moshi_mlx import models

    mx_dtype = _mx_dtype(dtype)
    if resolved.random_quant is not None:
        from engine.model.fullsize import build_lm

        cfg = make_lm_config(resolved.lm_config)
        model = build_lm(resolved.lm_config, resolved.random_quant, save=resolved.save_weights,
                         progress=progress)
        _say(progress, "warming up the model")
        model.warmup()
        return model, cfg
    path = Path(resolved.moshi_weight)
    what = f"moshi weights {path}"
    info = _header(path, what, "moshi weights")
    cfg = make_lm_config(resolved.lm_config)

    mx.random.seed(KYUTAI_SEED)
    model = models.Lm(cfg)
    model.set_dtype(mx_dtype)

    quant = _file_quantization(info, _param_shapes(model))
    if quant:
        kinds = sorted({(q["bits"], q["group_size"]) for q in quant.values()})
        desc = ", ".join(f"{b}-bit/group {g}" for b, g in kinds)
        _say(progress, f"weights are pre-quantized ({desc})")
        try:
            nn.quantize(model, class_predicate=lambda p, _m: quant.get(p, False))
        except (ValueError, TypeError) as exc:
            raise ModelLoadError(f"{what} cannot be loaded: {first_line(exc)}") from None

    _check_tensors(_param_shapes(model), info, what, resolved.lm_config is None)
    _say(progress, f"loading {path.name}")
    try:
        model.load_weights(str(path), strict=True)
    except Exception as exc:  # MLX raises ValueError/RuntimeError with long messages
        raise ModelLoadError(f"{what} cannot be loaded: {first_line(exc)}") from None

    bits = resolved.quantize_runtime
    if bits and quant:
        _say(progress, f"{path.name} is already quantized: no {bits}-bit quantization at load")
    elif bits:
        if bits not in RUNTIME_GROUP_SIZE:
            raise UsageError(f"cannot quantize to {bits} bits (use 4 or 8)")
        _say(progress, f"quantizing to {bits} bits (group size {RUNTIME_GROUP_SIZE[bits]})")
        try:
            nn.quantize(model, bits=bits, group_size=RUNTIME_GROUP_SIZE[bits])
        except ValueError as exc:
            raise ModelLoadError(f"{what} cannot be quantized: {first_line(exc)}") from None

    _say(progress, "warming up the model")
    model.warmup()
    return model, cfg


def make_gen(model: "Lm", max_steps: int) -> "LmGen":
    """An LmGen with default samplers for text and audio, as local.py builds it."""
    from moshi_mlx import models, utils

    return models.LmGen(
        model=model,
        max_steps=max_steps,
        text_sampler=utils.Sampler(),
        audio_sampler=utils.Sampler(),
        check=False,
    )


def load_text_tokenizer(
    path: Path | str, text_card: int | None = None
) -> "sentencepiece.SentencePieceProcessor":
    """The sentencepiece text tokenizer; with `text_card`, check it covers every text token."""
    import sentencepiece

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"text tokenizer not found: {path}")
    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError, ValueError, TypeError):
        raise ModelLoadError(f"not a sentencepiece model: {path}") from None
    if text_card is not None and sp.vocab_size() < text_card:
        raise ModelLoadError(
            f"text tokenizer {path} has {sp.vocab_size()} pieces but the model emits"
            f" {text_card} text tokens (wrong --tokenizer?)"
        )
    return sp


def check_mimi(path: Path | str) -> SafetensorsInfo:
    """Cheap sanity check of a Mimi codec file (header only) before rustymimi loads it."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"mimi weights not found: {path}")
    info = _header(path, f"mimi weights {path}", "mimi weights")
    names = info.tensors
    for part in ("encoder.", "decoder.", "quantizer."):
        if not any(name.startswith(part) for name in names):
            raise ModelLoadError(
                f"mimi weights {path} are not a Mimi codec: no {part.rstrip('.')} tensors"
            )
    codebooks = sum(1 for name in names if name.endswith("._codebook.embedding_sum"))
    if codebooks < 8:
        raise ModelLoadError(
            f"mimi weights {path} have {codebooks} codebooks with PyTorch names, Moshi needs 8"
        )
    return info


def _header(path: Path, what: str, kind: str) -> SafetensorsInfo:
    if not path.is_file():
        raise ModelLoadError(f"{kind} not found: {path}")
    try:
        return read_safetensors_header(path)
    except SafetensorsError as exc:
        raise ModelLoadError(f"{what}: {exc}") from None


def _param_shapes(model) -> dict[str, tuple[int, ...]]:
    from mlx.utils import tree_flatten

    return {name: tuple(arr.shape) for name, arr in tree_flatten(model.parameters())}


def _file_quantization(
    info: SafetensorsInfo, shapes: dict[str, tuple[int, ...]]
) -> dict[str, dict]:
    """{module path: {"bits", "group_size"}} for every module the file stores quantized.

    A quantized `X.weight` packs `in_features * bits / 32` uint32 per row and `X.scales`
    has `in_features / group_size` columns; `in_features` comes from the unquantized model.
    """
    out: dict[str, dict] = {}
    for name, entry in info.tensors.items():
        if not name.endswith(".scales"):
            continue
        module = name[: -len(".scales")]
        weight = info.tensors.get(f"{module}.weight")
        expected = shapes.get(f"{module}.weight")
        if weight is None or expected is None or not weight["shape"] or not entry["shape"]:
            continue  # reported by the name check
        in_features = expected[-1]
        packed, groups = weight["shape"][-1], entry["shape"][-1]
        bits, rem = divmod(packed * 32, in_features)
        if rem or bits not in _SUPPORTED_BITS or groups == 0 or in_features % groups:
            continue  # not a quantization of this model's layer: the shape check names it
        out[module] = {"bits": bits, "group_size": in_features // groups}
    return out


def _check_tensors(
    expected: dict[str, tuple[int, ...]], info: SafetensorsInfo, what: str, default_config: bool
) -> None:
    have = info.tensors
    missing = sorted(set(expected) - set(have))
    unexpected = sorted(set(have) - set(expected))
    wrong = [
        (name, list(have[name]["shape"]), list(expected[name]))
        for name in sorted(set(expected) & set(have))
        if tuple(have[name]["shape"]) != expected[name]
    ]
    if not (missing or unexpected or wrong):
        return
    hint = " (the Moshi 7B config was assumed: pass --lm-config?)" if default_config else ""
    if missing and len(missing) == len(expected):
        raise ModelLoadError(
            f"{what} do not match the model: no tensor has an expected name"
            f" (e.g. '{missing[0]}'); is it an MLX Moshi checkpoint?{hint}"
        )
    if missing:
        detail = f"missing tensor '{missing[0]}'{_more(missing)}"
    elif wrong:
        name, got, want = wrong[0]
        detail = f"tensor '{name}' has shape {got}, the model expects {want}{_more(wrong)}"
    else:
        detail = f"unexpected tensor '{unexpected[0]}'{_more(unexpected)}"
    raise ModelLoadError(f"{what} do not match the model: {detail}{hint}")


def _more(items: list) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _mx_dtype(dtype: str):
    import mlx.core as mx

    table = {
        "bf16": mx.bfloat16,
        "bfloat16": mx.bfloat16,
        "f16": mx.float16,
        "fp16": mx.float16,
        "float16": mx.float16,
        "f32": mx.float32,
        "fp32": mx.float32,
        "float32": mx.float32,
    }
    try:
        return table[dtype]
    except KeyError:
        raise UsageError(f"unsupported dtype {dtype!r} (use bf16, f16 or f32)") from None


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
