"""Where the model comes from: the demo, a Hugging Face repo, or local paths.

Pure file and network logic; MLX is never imported here (the server process does the
loading, see engine.model.load). `resolve()` returns plain paths plus the LM config as a dict, so
the result can be handed to a spawned process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.errors import ModelSourceError, UsageError
from engine.model import demo
from engine.model.hub import Hub, hub_moshi, name_bits
from engine.model.kind import ModelKind, model_kind
from engine.model.lm_config import load_lm_config
from engine.model.safetensors import SafetensorsError, read_safetensors_header

Progress = Callable[[str], None]
VOICES = ("moshika", "moshiko")  # Kyutai's two Moshi voices (female, male)
DEFAULT_MIMI_NAME = demo.MIMI_NAME
DEFAULT_TOKENIZER_NAME = demo.TOKENIZER_NAME


@dataclass
class ModelOptions:
    hf_repo: str | None = None
    quantized: int | None = None  # 4, 8 or None (bf16)
    moshi_weight: Path | str | None = None
    mimi_weight: Path | str | None = None
    tokenizer: Path | str | None = None
    lm_config: Path | str | None = None
    demo: bool = False
    demo_kind: str = "moshi"  # with demo: "moshi" or "hibiki" (a Hibiki-shaped demo)
    voice: str | None = None  # "moshika" or "moshiko": the repo kyutai/<voice>-mlx-q4 / -q8
    random: bool = False  # real-size Moshi (or --lm-config) with random weights, built in memory
    save_weights: Path | str | None = None  # with `random`: also write them there
    codec: str = "auto"  # the client's Mimi backend (engine.pipeline.codec.choose_codec)
    lm_step: str = "auto"  # how the model process steps the LM (engine.model.graph.lm_step.MODES)


@dataclass(frozen=True)
class ResolvedModel:
    lm_config: dict | None  # None: moshi_mlx's config_v0_1 (Moshi 7B)
    moshi_weight: Path | None
    mimi_weight: Path
    tokenizer: Path
    quantize_runtime: int | None  # quantize a bf16 file at load time with this many bits
    label: str  # for humans: "demo (bf16)", "kyutai/moshiko-mlx-q4 (q4)"
    source: str = "local"  # "demo", "hf", "local" or "random"
    random_quant: str | None = None  # "bf16", "q8", "q4": random weights (moshi_weight None)
    save_weights: Path | None = None  # random weights are written here too

    @property
    def kind(self) -> ModelKind:
        """Moshi (a conversation) or Hibiki (a translation), and its codebooks each way."""
        return model_kind(self.lm_config)


MOSHI_V0_1_TEXT_CARD = 32000  # text tokens Moshi 7B emits (moshi_mlx config_v0_1)


def text_card(resolved: ResolvedModel) -> int:
    """How many text tokens the LM emits: the text tokenizer must have a piece for each."""
    return int((resolved.lm_config or {}).get("text_card", MOSHI_V0_1_TEXT_CARD))


def resolve(opts: ModelOptions, progress: Progress | None = None) -> ResolvedModel:
    """Find (download or generate if needed) every file the model needs.

    Raises ModelSourceError with a one-line message (exit_code 2 for bad input,
    1 for runtime failures such as an unreachable hub).
    """
    if opts.quantized not in (None, 4, 8):
        raise UsageError(f"-q/--quantized must be 4 or 8, not {opts.quantized}")
    if opts.demo and opts.hf_repo:
        raise UsageError("--demo and --hf-repo cannot be used together")
    if opts.voice and (opts.demo or opts.random):
        raise UsageError(f"--voice picks a Kyutai repo: not with --{'demo' if opts.demo else 'random'}")

    if opts.random:
        return _resolve_random(opts, progress)
    if opts.save_weights:
        raise UsageError("--save-weights goes with --random (it writes the random weights)")

    moshi = _local_file(opts.moshi_weight, "moshi weights")
    mimi = _local_file(opts.mimi_weight, "mimi weights")
    tokenizer = _local_file(opts.tokenizer, "text tokenizer")
    config_path = _local_file(opts.lm_config, "lm config")
    lm_config = load_lm_config(config_path) if config_path is not None else None

    if opts.demo and opts.demo_kind == "hibiki":
        return _resolve_demo_hibiki(opts, progress, moshi, mimi, tokenizer, lm_config)
    if opts.demo:
        try:
            files = demo.ensure_demo(progress=progress)
        except OSError as exc:  # read-only cache, disk full (the demo needs ~450 MB)
            raise ModelSourceError(
                f"cannot write the demo model to {demo.default_cache_dir()}:"
                f" {exc.strerror or exc} (set {demo.CACHE_ENV} to another folder)",
                exit_code=1,
            ) from None
        if config_path is None:
            lm_config = load_lm_config(files.lm_config)
        if moshi is None:
            moshi = files.moshi(opts.quantized)
            label = f"demo ({_bits_label(opts.quantized)})"
            runtime = None
        else:
            runtime, kind = _local_quantization(moshi, opts.quantized, progress)
            label = f"demo with {moshi.name} ({kind})"
        return ResolvedModel(
            lm_config=lm_config,
            moshi_weight=moshi,
            mimi_weight=mimi or files.mimi,
            tokenizer=tokenizer or files.tokenizer,
            quantize_runtime=runtime,
            label=label,
            source="demo",
        )

    need_hub = moshi is None or mimi is None or tokenizer is None
    if not need_hub and not (opts.hf_repo and config_path is None):
        assert moshi is not None and mimi is not None and tokenizer is not None
        runtime, kind = _local_quantization(moshi, opts.quantized, progress)
        return ResolvedModel(
            lm_config=lm_config,
            moshi_weight=moshi,
            mimi_weight=mimi,
            tokenizer=tokenizer,
            quantize_runtime=runtime,
            label=f"{moshi.name} ({kind})",
            source="local",
        )

    if opts.voice and opts.hf_repo:
        raise UsageError("--voice and --hf-repo cannot be used together (the voice picks the repo)")
    if opts.voice is not None and opts.voice not in VOICES:
        raise UsageError(f"--voice must be one of {', '.join(VOICES)}, not {opts.voice!r}")
    voice = opts.voice or "moshiko"
    repo = opts.hf_repo or f"kyutai/{voice}-mlx-{'q8' if opts.quantized == 8 else 'q4'}"
    hub = Hub(repo, progress)
    repo_config = None
    if config_path is None:
        config_file = hub.get("config.json", optional=True)
        if config_file is not None:
            repo_config = load_lm_config(config_file, what=f"config.json of {repo}")
            lm_config = repo_config
    names = repo_config or {}
    if tokenizer is None:
        tokenizer = hub.get(names.get("tokenizer_name") or DEFAULT_TOKENIZER_NAME)
    if mimi is None:
        mimi = hub.get(names.get("mimi_name") or DEFAULT_MIMI_NAME)
    if moshi is None:
        moshi, runtime = hub_moshi(hub, opts.quantized, names.get("moshi_name"))
        bits = runtime or opts.quantized or name_bits(moshi.name)
        kind = f"q{runtime}, quantized at load" if runtime else _bits_label(bits)
        label = f"{repo} ({kind})"
    else:
        runtime, kind = _local_quantization(moshi, opts.quantized, progress)
        label = f"{moshi.name} ({kind})"
    assert mimi is not None and tokenizer is not None
    return ResolvedModel(
        lm_config=lm_config,
        moshi_weight=moshi,
        mimi_weight=mimi,
        tokenizer=tokenizer,
        quantize_runtime=runtime,
        label=label,
        source="hf",
    )


def _resolve_demo_hibiki(opts, progress, moshi, mimi, tokenizer, lm_config) -> ResolvedModel:
    """The demo Hibiki: bf16 weights on disk, -q N quantizes them at load."""
    try:
        files = demo.ensure_demo_hibiki(progress=progress)
    except OSError as exc:
        raise ModelSourceError(
            f"cannot write the demo model to {demo.default_cache_dir().parent}:"
            f" {exc.strerror or exc} (set {demo.CACHE_ENV} to another folder)", exit_code=1,
        ) from None
    bits = opts.quantized
    return ResolvedModel(
        lm_config=lm_config or load_lm_config(files.lm_config),
        moshi_weight=moshi or files.model, mimi_weight=mimi or files.mimi,
        tokenizer=tokenizer or files.tokenizer, quantize_runtime=bits,
        label=f"demo Hibiki ({'q%d, quantized at load' % bits if bits else 'bf16'})",
        source="demo")


def _resolve_random(opts: ModelOptions, progress: Progress | None) -> ResolvedModel:
    """Real-size Moshi (or the --lm-config's model) with random weights: nothing to download.
    Mimi is the demo's (full size, random), the text tokenizer a local one of the model's
    text vocabulary size."""
    from engine.model import fullsize

    for flag, value in (("--demo", opts.demo), ("--hf-repo", opts.hf_repo),
                        ("--moshi-weight", opts.moshi_weight)):
        if value:
            raise UsageError(f"--random and {flag} cannot be used together")
    config_path = _local_file(opts.lm_config, "lm config")
    lm_config = load_lm_config(config_path) if config_path is not None else None
    save = Path(opts.save_weights).expanduser() if opts.save_weights else None
    if save is not None and (save.is_dir() or not save.parent.is_dir()):
        raise UsageError(f"--save-weights: not a file in an existing folder: {save}")
    mimi = _local_file(opts.mimi_weight, "mimi weights")
    tokenizer = _local_file(opts.tokenizer, "text tokenizer")
    try:
        if mimi is None:
            mimi = demo.ensure_demo(progress=progress).mimi
        card = int((lm_config or {}).get("text_card", MOSHI_V0_1_TEXT_CARD))
        if tokenizer is None:
            tokenizer = fullsize.ensure_text_tokenizer(card, progress=progress)
    except OSError as exc:
        raise ModelSourceError(
            f"cannot write the random model's files to {demo.default_cache_dir()}:"
            f" {exc.strerror or exc} (set {demo.CACHE_ENV} to another folder)", exit_code=1,
        ) from None
    quant = _bits_label(opts.quantized)
    what = f"{config_path.name}" if config_path is not None else "Moshi v0.1 7B"
    return ResolvedModel(lm_config=lm_config, moshi_weight=None, mimi_weight=mimi,
                         tokenizer=tokenizer, quantize_runtime=None,
                         label=f"random {what} ({quant})", source="random",
                         random_quant=quant, save_weights=save)


def _local_file(value: Path | str | None, what: str) -> Path | None:
    if value is None or value == "":
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise ModelSourceError(f"{what} not found: {path}")
    if path.is_dir():
        raise ModelSourceError(f"{what} is a directory, expected a file: {path}")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ModelSourceError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    return path


def _local_quantization(
    moshi: Path, quantized: int | None, progress: Progress | None
) -> tuple[int | None, str]:
    """(bits to quantize at load time or None, label) for a weights file given by path."""
    try:
        info = read_safetensors_header(moshi)
    except SafetensorsError:
        # The loader reports the problem with its full context; keep the request as is.
        return quantized, _bits_label(quantized)
    if info.is_quantized:
        bits = name_bits(moshi.name)
        if quantized is not None and bits is not None and bits != quantized:
            _say(progress, f"{moshi.name} is already {bits}-bit: -q {quantized} ignored")
        return None, f"q{bits}" if bits else "pre-quantized"
    if quantized is not None:
        return quantized, f"{info.float_kind} → q{quantized} at load"
    return None, info.float_kind


def _bits_label(bits: int | None) -> str:
    return f"q{bits}" if bits else "bf16"


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
